// Command mkimage builds one of multinic's images as a docker-archive tar, without a Docker engine or a
// registry: `go run ./tools/mkimage -image multinic -tag ghcr.io/multinic/multinic:dev -out
// bin/multinic-image.tar` (what `make image` runs). -image pause and -image busybox build the real-node
// e2e's pause and busybox images. Run it inside the module: it compiles the images' programs.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/multinic/multinic/tools/imagebuild"
)

func main() {
	image := flag.String("image", imagebuild.Multinic, fmt.Sprintf("the image: %s, %s or %s", imagebuild.Multinic, imagebuild.Pause, imagebuild.Busybox))
	tag := flag.String("tag", "", "the image's reference (default: the image's own, e.g. "+imagebuild.DefaultMultinicRef+")")
	out := flag.String("out", "", "the docker-archive tar to write")
	flag.Parse()
	if *out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "mkimage: -out is required, and no arguments")
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ref := *tag
	if ref == "" {
		ref = imagebuild.DefaultRef(*image)
	}
	digest, err := imagebuild.BuildImage(ctx, *image, ref, *out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s %s\n", *out, ref, digest)
}
