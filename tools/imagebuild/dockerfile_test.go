package imagebuild

import (
	"archive/tar"
	"bufio"
	"encoding/json"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/multinic/multinic/internal/gobuild"
)

// dockerfile is what the test reads of the repository's Dockerfile.
type dockerfile struct {
	buildImage string            // FROM of the first stage
	buildRun   string            // its RUN line with `go build`
	final      string            // FROM of the last stage
	files      map[string]int64  // the last stage's COPY destinations: path -> --chmod
	entrypoint []string          // the last stage's ENTRYPOINT (exec form)
	copies     map[string]string // the last stage's COPY destination -> source
	multiCopy  string            // the last stage's COPY with other than one source and one destination
}

// parseDockerfile reads the instructions the multinic Dockerfile uses: FROM, RUN, COPY with --from and
// --chmod and one source, ENTRYPOINT in exec form. Line continuations are joined.
func parseDockerfile(t *testing.T, p string) dockerfile {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	cur := ""
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "#") || (l == "" && cur == "") {
			continue
		}
		if strings.HasSuffix(l, `\`) {
			cur += strings.TrimSuffix(l, `\`) + " "
			continue
		}
		lines = append(lines, cur+l)
		cur = ""
	}
	d := dockerfile{files: map[string]int64{}, copies: map[string]string{}}
	stages := 0
	for _, l := range lines {
		instr, rest, _ := strings.Cut(l, " ")
		switch strings.ToUpper(instr) {
		case "FROM":
			stages++
			d.final = strings.Fields(rest)[0]
			if stages == 1 {
				d.buildImage = d.final
			}
			d.files, d.copies, d.entrypoint, d.multiCopy = map[string]int64{}, map[string]string{}, nil, ""
		case "RUN":
			if strings.Contains(rest, "go build") {
				d.buildRun = rest
			}
		case "COPY":
			f := strings.Fields(rest)
			mode := int64(-1)
			var args []string
			for _, a := range f {
				switch {
				case strings.HasPrefix(a, "--chmod="):
					m, err := strconv.ParseInt(strings.TrimPrefix(a, "--chmod="), 8, 64)
					if err != nil {
						t.Fatalf("%s: %v", l, err)
					}
					mode = m
				case strings.HasPrefix(a, "--"):
				default:
					args = append(args, a)
				}
			}
			if len(args) != 2 {
				d.multiCopy = l // fine in the build stage, not in the image's
				continue
			}
			d.files[args[1]] = mode
			d.copies[args[1]] = args[0]
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(rest), &d.entrypoint); err != nil {
				t.Fatalf("%s: exec form expected: %v", l, err)
			}
		}
	}
	return d
}

// TestDockerfileMatchesImage: the Dockerfile's last stage and `make image` (MultinicSpec, read back from
// its archive) have the same files with the same modes, parents included, and the same entrypoint; the
// Dockerfile builds from the Go release of go.mod, with the same flags, on an empty base.
func TestDockerfileMatchesImage(t *testing.T) {
	root := filepath.Join("..", "..")
	d := parseDockerfile(t, filepath.Join(root, "Dockerfile"))
	if d.multiCopy != "" {
		t.Fatalf("%s: want one source and one destination (this test compares file by file)", d.multiCopy)
	}

	// make image's side: the spec with stand-in binaries, through an archive and back.
	bin := t.TempDir()
	for _, p := range []string{AgentPath, PluginPath, NRIPath} {
		writeFile(t, bin, path.Base(p), "binary "+p)
	}
	out := filepath.Join(t.TempDir(), "multinic.tar")
	if _, err := BuildArchive(MultinicSpec(bin), DefaultMultinicRef, out); err != nil {
		t.Fatal(err)
	}
	_, cf, files := readBack(t, out, DefaultMultinicRef)

	// The Dockerfile's side: each COPY's file and the directories above it, which COPY creates 0755.
	want := map[string]int64{}
	for dest, mode := range d.files {
		if mode < 0 {
			t.Errorf("COPY to %s has no --chmod: its mode would be the build stage's", dest)
		}
		want[strings.TrimPrefix(dest, "/")] = mode
		for dir := path.Dir(dest); dir != "/"; dir = path.Dir(dir) {
			want[strings.TrimPrefix(dir, "/")] = 0o755
		}
		if src := d.copies[dest]; path.Base(src) != path.Base(dest) {
			t.Errorf("COPY %s to %s: the binary is renamed", src, dest)
		}
	}
	got := map[string]int64{}
	for name, f := range files {
		got[name] = f.Mode
		if f.Type != tar.TypeDir && f.Type != tar.TypeReg {
			t.Errorf("%s: type %c in the image, the Dockerfile copies only files", name, f.Type)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("make image's files and modes\n%v\nthe Dockerfile's\n%v", got, want)
	}
	if !reflect.DeepEqual(cf.Config.Entrypoint, d.entrypoint) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint: make image %v (cmd %v), the Dockerfile %v", cf.Config.Entrypoint, cf.Config.Cmd, d.entrypoint)
	}
	if d.final != "scratch" {
		t.Errorf("the Dockerfile's image is FROM %s, want scratch", d.final)
	}

	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(mod)
	if goLine == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "golang:" + string(goLine[1]); d.buildImage != want {
		t.Errorf("build stage FROM %s, want %s (go.mod's go)", d.buildImage, want)
	}
	flags := regexp.MustCompile(`go build (.*) -o `).FindStringSubmatch(d.buildRun)
	if !strings.Contains(d.buildRun, "CGO_ENABLED=0") || flags == nil || strings.Join(gobuild.Flags, " ") != flags[1] {
		t.Errorf("the Dockerfile's build %q, want CGO_ENABLED=0 go build %s", d.buildRun, strings.Join(gobuild.Flags, " "))
	}
	for _, pkg := range []string{"./cmd/multinic-agent", "./cmd/multinic", "./cmd/multinic-nri"} {
		if !strings.Contains(d.buildRun+" ", " "+pkg+" ") {
			t.Errorf("the Dockerfile does not build %s", pkg)
		}
	}
}
