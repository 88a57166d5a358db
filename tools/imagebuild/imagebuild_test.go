package imagebuild

import (
	"archive/tar"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// fileInfo is what a test compares of one entry of an image's file system.
type fileInfo struct {
	Type byte
	Mode int64
	Link string
	Data string
}

// readBack loads the archive at p with go-containerregistry's reader (the one image tools use) and returns
// the image tagged ref, its config, and its flattened file system.
func readBack(t *testing.T, p, ref string) (v1.Image, *v1.ConfigFile, map[string]fileInfo) {
	t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(p, &tag)
	if err != nil {
		t.Fatalf("read %s as %s: %v", p, ref, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return img, cf, flatten(t, img)
}

// flatten is the flattened file system of img, by path without the leading slash.
func flatten(t *testing.T, img v1.Image) map[string]fileInfo {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	out := map[string]fileInfo{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want %v and root", h.Name, h.ModTime, h.Uid, h.Gid, epoch)
		}
		out[h.Name] = fileInfo{Type: h.Typeflag, Mode: h.Mode, Link: h.Linkname, Data: string(data)}
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBuildArchive: the archive holds exactly the entries (modes as given, not the host file's), their
// parent directories, the entrypoint and command, and reads back under its tag.
func TestBuildArchive(t *testing.T) {
	dir := t.TempDir()
	spec := Spec{
		Entries: []Entry{
			{Path: "/usr/local/bin/tool", Mode: 0o755, Src: writeFile(t, dir, "tool", "#tool")},
			{Path: "/etc/conf", Mode: 0o644, Src: writeFile(t, dir, "conf", "a=b")},
			{Path: "/bin/sh", Link: "/usr/local/bin/tool"},
		},
		Entrypoint: []string{"/usr/local/bin/tool", "run"},
		Cmd:        []string{"--x"},
		Arch:       runtime.GOARCH,
	}
	out := filepath.Join(dir, "out", "image.tar")
	digest, err := BuildArchive(spec, "example.com/tool:v1", out)
	if err != nil {
		t.Fatal(err)
	}
	img, cf, files := readBack(t, out, "example.com/tool:v1")
	if d, _ := img.Digest(); d != digest {
		t.Errorf("digest read back %s, BuildArchive said %s", d, digest)
	}
	want := map[string]fileInfo{
		"usr":                {Type: tar.TypeDir, Mode: 0o755},
		"usr/local":          {Type: tar.TypeDir, Mode: 0o755},
		"usr/local/bin":      {Type: tar.TypeDir, Mode: 0o755},
		"usr/local/bin/tool": {Type: tar.TypeReg, Mode: 0o755, Data: "#tool"},
		"etc":                {Type: tar.TypeDir, Mode: 0o755},
		"etc/conf":           {Type: tar.TypeReg, Mode: 0o644, Data: "a=b"},
		"bin":                {Type: tar.TypeDir, Mode: 0o755},
		"bin/sh":             {Type: tar.TypeSymlink, Mode: 0o777, Link: "/usr/local/bin/tool"},
	}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("files\n%v\nwant\n%v", files, want)
	}
	if !reflect.DeepEqual(cf.Config.Entrypoint, spec.Entrypoint) || !reflect.DeepEqual(cf.Config.Cmd, spec.Cmd) ||
		!reflect.DeepEqual(cf.Config.Env, []string{DefaultPath}) || cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("config %+v", cf)
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("archive %v %v", fi, err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "out", "*.tmp-*")); len(left) != 0 {
		t.Errorf("temp files left: %v", left)
	}
}

// TestDeterministic: the same files give the same digest and the same archive bytes, whatever the host
// files' mtimes; other content gives another digest.
func TestDeterministic(t *testing.T) {
	dir := t.TempDir()
	src := writeFile(t, dir, "bin", "one")
	spec := Spec{Entries: []Entry{{Path: "/bin/x", Mode: 0o755, Src: src}}, Entrypoint: []string{"/bin/x"}, Arch: "amd64"}
	d1, err := BuildArchive(spec, "x:1", filepath.Join(dir, "1.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(src, time.Unix(12345, 0), time.Unix(12345, 0)); err != nil {
		t.Fatal(err)
	}
	d2, err := BuildArchive(spec, "x:1", filepath.Join(dir, "2.tar"))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "1.tar"))
	b, _ := os.ReadFile(filepath.Join(dir, "2.tar"))
	if d1 != d2 || string(a) != string(b) {
		t.Errorf("same input, digests %s and %s, archives equal %t", d1, d2, string(a) == string(b))
	}
	writeFile(t, dir, "bin", "two")
	d3, err := BuildArchive(spec, "x:1", filepath.Join(dir, "3.tar"))
	if err != nil {
		t.Fatal(err)
	}
	if d3 == d1 {
		t.Errorf("other content, same digest %s", d3)
	}
}

// TestBadSpec: relative, unclean and repeated paths and missing sources are refused, and no archive is
// left behind.
func TestBadSpec(t *testing.T) {
	dir := t.TempDir()
	src := writeFile(t, dir, "f", "x")
	for name, entries := range map[string][]Entry{
		"relative": {{Path: "bin/x", Src: src}},
		"unclean":  {{Path: "/bin/../x", Src: src}},
		"root":     {{Path: "/", Src: src}},
		"twice":    {{Path: "/x", Src: src}, {Path: "/x", Link: "/y"}},
		"missing":  {{Path: "/x", Src: filepath.Join(dir, "nope")}},
	} {
		out := filepath.Join(dir, name+".tar")
		if _, err := BuildArchive(Spec{Entries: entries, Arch: "amd64"}, "x:1", out); err == nil {
			t.Errorf("%s: built", name)
		}
		if _, err := os.Stat(out); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: archive left: %v", name, err)
		}
	}
	if _, err := BuildArchive(Spec{Entries: []Entry{{Path: "/x", Src: src}}}, "UPPER/case", filepath.Join(dir, "r.tar")); err == nil {
		t.Error("an invalid reference was accepted")
	}
}
