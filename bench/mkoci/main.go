// Command mkoci turns an uncompressed root filesystem tar into a one-layer
// OCI image layout with a gzip layer, as a conventional image builder would.
// It prepares the input of bench/convert.sh.
//
//	go run ./bench/mkoci -tar rootfs.tar -out DIR [-tag latest] [-cmd python3]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func main() {
	tarPath := flag.String("tar", "", "uncompressed layer tar (required)")
	out := flag.String("out", "", "OCI layout directory to create (required; must not exist)")
	tag := flag.String("tag", "latest", "org.opencontainers.image.ref.name of the image")
	cmd := flag.String("cmd", "python3", "the image's default command")
	level := flag.Int("level", 6, "gzip level of the layer")
	arch := flag.String("arch", runtime.GOARCH, "the image's architecture")
	flag.Parse()
	if *tarPath == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*tarPath, *out, *tag, *cmd, *arch, *level); err != nil {
		fmt.Fprintf(os.Stderr, "mkoci: %v\n", err)
		os.Exit(1)
	}
}

func run(tarPath, out, tag, cmd, arch string, level int) error {
	if _, err := os.Stat(out); err == nil {
		return fmt.Errorf("layout %s already exists", out)
	}
	layer, err := tarball.LayerFromFile(tarPath,
		tarball.WithCompressionLevel(level), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return fmt.Errorf("layer %s: %w", tarPath, err)
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(base, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Cmd = []string{cmd}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	p, err := layout.Write(out, empty.Index)
	if err != nil {
		return fmt.Errorf("layout %s: %w", out, err)
	}
	err = p.AppendImage(img,
		layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": tag}),
		layout.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))
	if err != nil {
		return fmt.Errorf("layout %s: %w", out, err)
	}
	d, err := img.Digest()
	if err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	fmt.Printf("%s:%s %s\n", out, tag, d)
	return nil
}
