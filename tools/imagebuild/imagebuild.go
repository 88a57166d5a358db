// Package imagebuild builds single-layer container images from local files and writes them as
// docker-archive tars (what `docker load`, `podman load`, `ctr images import` and `kind load image-archive`
// read), with go-containerregistry: no Docker engine, no registry, no base image. The output is
// deterministic: the same files give the same image digest (fixed mtimes and owners, no build time).
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// DefaultPath is the PATH of every image's environment.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// epoch is every entry's mtime and the image's creation time, so that the digest depends on content only.
var epoch = time.Unix(0, 0).UTC()

// Entry is one file or symlink of an image. Parent directories are added with mode 0755.
type Entry struct {
	Path string      // absolute path in the image
	Mode fs.FileMode // permission bits of a file
	Src  string      // a file: the host file its content is read from
	Link string      // a symlink: its target (then Src and Mode are unused)
}

// Spec is an image: its files, entrypoint and command, for one platform.
type Spec struct {
	Entries    []Entry
	Entrypoint []string
	Cmd        []string
	Arch       string // GOARCH of the binaries
}

// Build makes the image: one layer holding the entries, on an empty base.
func Build(s Spec) (v1.Image, error) {
	layerTar, err := layerTar(s.Entries)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("make layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", s.Arch
	cf.Created = v1.Time{Time: epoch}
	for i := range cf.History {
		cf.History[i].Created = v1.Time{Time: epoch}
	}
	cf.Config.Env = []string{DefaultPath}
	cf.Config.Entrypoint = s.Entrypoint
	cf.Config.Cmd = s.Cmd
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("set config: %w", err)
	}
	return img, nil
}

// layerTar is the layer's uncompressed tar: parent directories first, then each entry in order.
func layerTar(entries []Entry) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addParents := func(p string) error {
		parts := strings.Split(strings.Trim(path.Dir(p), "/"), "/")
		for i := range parts {
			d := strings.Join(parts[:i+1], "/") + "/"
			if d == "/" || dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
				return err
			}
		}
		return nil
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if !path.IsAbs(e.Path) || path.Clean(e.Path) != e.Path || e.Path == "/" {
			return nil, fmt.Errorf("image path %q: want a clean absolute file path", e.Path)
		}
		if seen[e.Path] {
			return nil, fmt.Errorf("image path %s given twice", e.Path)
		}
		seen[e.Path] = true
		if err := addParents(e.Path); err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(e.Path, "/")
		if e.Link != "" {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: e.Link, Mode: 0o777, ModTime: epoch}); err != nil {
				return nil, err
			}
			continue
		}
		data, err := os.ReadFile(e.Src)
		if err != nil {
			return nil, fmt.Errorf("read %s for %s: %w", e.Src, e.Path, err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: int64(e.Mode.Perm()), Size: int64(len(data)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteArchive writes img tagged ref as a docker-archive tar to out, replacing it only once complete.
func WriteArchive(out, ref string, img v1.Image) (retErr error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(out), filepath.Base(out)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if retErr != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := tarball.Write(tag, img, f); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), out)
}

// BuildArchive builds s and writes it tagged ref to out; it returns the image's digest.
func BuildArchive(s Spec, ref, out string) (v1.Hash, error) {
	img, err := Build(s)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := WriteArchive(out, ref, img); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}
