package convert

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"nibble.dev/nibble/internal/format"
	"nibble.dev/nibble/internal/imageref"
)

// ErrNotImage reports a source that is not a container image: a manifest
// whose layers are not tar layers, or an index without such images.
var ErrNotImage = errors.New("convert: not a container image")

// ErrNoPlatform reports a platform filter that matches nothing.
var ErrNoPlatform = errors.New("convert: no image matches the platform filter")

// plan is an image or index to convert.
type plan struct {
	// An image:
	img         v1.Image
	platform    *v1.Platform
	mediaType   types.MediaType
	rawManifest []byte
	rawConfig   []byte
	diffIDs     []v1.Hash
	layerDescs  []v1.Descriptor
	tasks       []*layerTask // nil for a layer kept untouched (non-distributable)
	// An index:
	idx      v1.ImageIndex
	rawIndex []byte
	children []child
}

type child struct {
	desc v1.Descriptor
	plan *plan
}

func (c *converter) task(layer v1.Layer, desc v1.Descriptor, diffID v1.Hash) *layerTask {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.layers[desc.Digest]; ok {
		return t
	}
	t := &layerTask{job: &layerJob{cfg: c.cfg, dir: c.dir, layer: layer, desc: desc, diffID: diffID}}
	c.layers[desc.Digest] = t
	c.order = append(c.order, t)
	return t
}

func (c *converter) sortedTasks() []*layerTask { return c.order }

// isLayer reports whether mt is a (distributable) tar layer media type.
func isLayer(mt types.MediaType) bool {
	switch mt {
	case types.DockerLayer, types.DockerUncompressedLayer, types.OCILayer, types.OCILayerZStd, types.OCIUncompressedLayer:
		return true
	}
	return false
}

func platformOf(cf *v1.ConfigFile) *v1.Platform {
	return &v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant, OSVersion: cf.OSVersion}
}

// planImage plans the conversion of img. platform is its index entry's,
// or nil to take it from the config. A top-level image must pass the
// platform filter; in an index, images that do not are left out (nil).
func (c *converter) planImage(img v1.Image, platform *v1.Platform, top bool) (*plan, error) {
	mt, err := img.MediaType()
	if err != nil {
		return nil, err
	}
	if mt != types.OCIManifestSchema1 && mt != types.DockerManifestSchema2 {
		return nil, fmt.Errorf("%w: manifest media type %q", ErrNotImage, mt)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	rawManifest, err := img.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	rawConfig, err := img.RawConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%w: config: %w", ErrNotImage, err)
	}
	if platform == nil {
		platform = platformOf(cf)
	}
	if !c.cfg.matches(platform) {
		if top {
			return nil, fmt.Errorf("%w: the image is %s", ErrNoPlatform, platform)
		}
		return nil, nil
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: %d layers but %d diff IDs in the config", ErrNotImage, len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	for _, d := range m.Layers {
		if d.MediaType.IsDistributable() && !isLayer(d.MediaType) {
			return nil, fmt.Errorf("%w: layer %s has media type %q", ErrNotImage, d.Digest, d.MediaType)
		}
	}
	p := &plan{
		img: img, platform: platform, mediaType: mt,
		rawManifest: rawManifest, rawConfig: rawConfig,
		diffIDs: cf.RootFS.DiffIDs, layerDescs: m.Layers,
		tasks: make([]*layerTask, len(m.Layers)),
	}
	for i, d := range m.Layers {
		if !d.MediaType.IsDistributable() {
			continue
		}
		layer, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", d.Digest, err)
		}
		p.tasks[i] = c.task(layer, d, cf.RootFS.DiffIDs[i])
	}
	return p, nil
}

// planIndex plans the conversion of every image of idx that passes the
// platform filter. Entries that are not container images (attestations,
// artifacts) are left out of the output.
func (c *converter) planIndex(idx v1.ImageIndex) (*plan, error) {
	p, err := c.planIndexRec(idx, 0)
	if err != nil {
		return nil, err
	}
	if len(p.children) == 0 {
		if len(c.cfg.platforms) > 0 {
			return nil, ErrNoPlatform
		}
		return nil, fmt.Errorf("%w: the index holds no container image", ErrNotImage)
	}
	return p, nil
}

func (c *converter) planIndexRec(idx v1.ImageIndex, depth int) (*plan, error) {
	if depth > 4 {
		return nil, fmt.Errorf("%w: indexes nested too deep", ErrNotImage)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	raw, err := idx.RawManifest()
	if err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	p := &plan{idx: idx, rawIndex: raw}
	for _, d := range im.Manifests {
		switch {
		case d.MediaType.IsIndex():
			sub, err := idx.ImageIndex(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("index %s: %w", d.Digest, err)
			}
			sp, err := c.planIndexRec(sub, depth+1)
			if err != nil {
				return nil, err
			}
			if len(sp.children) > 0 {
				p.children = append(p.children, child{desc: d, plan: sp})
			}
		case d.MediaType == types.OCIManifestSchema1 || d.MediaType == types.DockerManifestSchema2:
			if d.Platform != nil && d.Platform.OS == "unknown" {
				continue // an attestation manifest; it would describe the old image
			}
			img, err := idx.Image(d.Digest)
			if err != nil {
				return nil, fmt.Errorf("image %s: %w", d.Digest, err)
			}
			ip, err := c.planImage(img, d.Platform, false)
			if errors.Is(err, ErrNotImage) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("image %s: %w", d.Digest, err)
			}
			if ip != nil {
				p.children = append(p.children, child{desc: d, plan: ip})
			}
		}
	}
	return p, nil
}

// assemble builds the converted artifact from a plan whose layers ran.
func (c *converter) assemble(p *plan, res *Result) (imageref.Artifact, error) {
	if p.img != nil {
		img, ir, err := c.assembleImage(p)
		if err != nil {
			return imageref.Artifact{}, err
		}
		res.Images = append(res.Images, ir)
		return imageref.Artifact{Image: img}, nil
	}
	out := &index{children: map[v1.Hash]imageref.Artifact{}}
	descs := make([]v1.Descriptor, 0, len(p.children))
	changed := false
	for _, ch := range p.children {
		a, err := c.assemble(ch.plan, res)
		if err != nil {
			return imageref.Artifact{}, err
		}
		d := ch.desc
		raw, err := rawOf(a)
		if err != nil {
			return imageref.Artifact{}, err
		}
		d.Digest, d.Size, err = v1.SHA256(bytes.NewReader(raw))
		if err != nil {
			return imageref.Artifact{}, err
		}
		changed = changed || d.Digest != ch.desc.Digest
		descs = append(descs, d)
		out.children[d.Digest] = a
	}
	mt, err := p.idx.MediaType()
	if err != nil {
		return imageref.Artifact{}, err
	}
	out.mediaType = mt
	out.raw = p.rawIndex
	im, err := p.idx.IndexManifest()
	if err != nil {
		return imageref.Artifact{}, err
	}
	if changed || len(descs) != len(im.Manifests) {
		out.raw, err = replaceFields(p.rawIndex, map[string]any{"manifests": descs})
		if err != nil {
			return imageref.Artifact{}, fmt.Errorf("index: %w", err)
		}
	}
	return imageref.Artifact{Index: out}, nil
}

func rawOf(a imageref.Artifact) ([]byte, error) {
	if a.Image != nil {
		return a.Image.RawManifest()
	}
	return a.Index.RawManifest()
}

// layerMediaType is the media type of a converted layer in a manifest of
// the given media type.
func layerMediaType(manifest types.MediaType, comp format.Compression) types.MediaType {
	switch {
	case comp == format.Zstd:
		return types.OCILayerZStd
	case manifest == types.DockerManifestSchema2:
		return types.DockerLayer
	}
	return types.OCILayer
}

func (c *converter) assembleImage(p *plan) (v1.Image, ImageResult, error) {
	ir := ImageResult{Platform: p.platform}
	var err error
	if ir.Source, err = p.img.Digest(); err != nil {
		return nil, ir, err
	}
	img := &image{mediaType: p.mediaType, layers: map[v1.Hash]partial.CompressedLayer{}}
	descs := make([]v1.Descriptor, len(p.layerDescs))
	diffIDs := make([]v1.Hash, len(p.layerDescs))
	layersChanged := false
	for i, src := range p.layerDescs {
		t := p.tasks[i]
		if t == nil { // non-distributable: kept as it is, not fetched
			descs[i], diffIDs[i] = src, p.diffIDs[i]
			l, err := p.img.LayerByDigest(src.Digest)
			if err != nil {
				return nil, ir, err
			}
			img.layers[src.Digest] = l
			continue
		}
		out := t.out
		d := src
		if !out.kept {
			d.MediaType = layerMediaType(p.mediaType, out.compression)
			d.Digest, d.Size = out.digest, out.size
			d.URLs, d.Data = nil, nil
			ann := maps.Clone(src.Annotations)
			for _, k := range formatAnnotations {
				delete(ann, k)
			}
			if ann == nil {
				ann = map[string]string{}
			}
			maps.Copy(ann, out.annotations)
			if len(ann) == 0 {
				ann = nil
			}
			d.Annotations = ann
		}
		layersChanged = layersChanged || !out.kept
		descs[i], diffIDs[i] = d, out.diffID
		img.layers[d.Digest] = &fileLayer{path: out.path, digest: out.digest, diffID: out.diffID, size: out.size, mediaType: d.MediaType}
		ir.Layers = append(ir.Layers, LayerResult{
			Source: src, Descriptor: d, DiffID: out.diffID, TOCDigest: out.tocDigest,
			Entries: out.entries, Files: out.files, Kept: out.kept,
		})
	}
	img.rawConfig, img.rawManifest = p.rawConfig, p.rawManifest
	if layersChanged {
		rootfs, err := configRootFS(p.rawConfig, diffIDs)
		if err != nil {
			return nil, ir, err
		}
		if img.rawConfig, err = replaceFields(p.rawConfig, map[string]any{"rootfs": rootfs}); err != nil {
			return nil, ir, fmt.Errorf("config: %w", err)
		}
		m, err := p.img.Manifest()
		if err != nil {
			return nil, ir, err
		}
		cd := m.Config
		cd.Digest, cd.Size, err = v1.SHA256(bytes.NewReader(img.rawConfig))
		if err != nil {
			return nil, ir, err
		}
		if img.rawManifest, err = replaceFields(p.rawManifest, map[string]any{"config": cd, "layers": descs}); err != nil {
			return nil, ir, fmt.Errorf("manifest: %w", err)
		}
	}
	out, err := partial.CompressedToImage(img)
	if err != nil {
		return nil, ir, err
	}
	if ir.Digest, err = out.Digest(); err != nil {
		return nil, ir, err
	}
	return out, ir, nil
}

// configRootFS returns the config's rootfs object with new diff IDs, other
// keys kept.
func configRootFS(rawConfig []byte, diffIDs []v1.Hash) (map[string]json.RawMessage, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(rawConfig, &top); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	rootfs := map[string]json.RawMessage{}
	if r, ok := top["rootfs"]; ok {
		if err := json.Unmarshal(r, &rootfs); err != nil {
			return nil, fmt.Errorf("config rootfs: %w", err)
		}
	}
	if _, ok := rootfs["type"]; !ok {
		rootfs["type"] = json.RawMessage(`"layers"`)
	}
	ids, err := json.Marshal(diffIDs)
	if err != nil {
		return nil, err
	}
	rootfs["diff_ids"] = ids
	return rootfs, nil
}

// replaceFields sets top-level fields of a JSON object, keeping all others
// (unknown ones too). Keys come out sorted, so the result is deterministic.
func replaceFields(raw []byte, fields map[string]any) ([]byte, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return nil, err
	}
	for k, v := range fields {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		top[k] = b
	}
	return json.Marshal(top)
}

// image is a converted image: raw manifest and config, layers by digest.
type image struct {
	mediaType   types.MediaType
	rawManifest []byte
	rawConfig   []byte
	layers      map[v1.Hash]partial.CompressedLayer
}

var _ partial.CompressedImageCore = (*image)(nil)

func (i *image) RawConfigFile() ([]byte, error)      { return i.rawConfig, nil }
func (i *image) MediaType() (types.MediaType, error) { return i.mediaType, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.rawManifest, nil }
func (i *image) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	if l, ok := i.layers[h]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("convert: no layer %s in the converted image", h)
}

// index is a converted index.
type index struct {
	mediaType types.MediaType
	raw       []byte
	children  map[v1.Hash]imageref.Artifact
}

var _ v1.ImageIndex = (*index)(nil)

func (x *index) MediaType() (types.MediaType, error) { return x.mediaType, nil }
func (x *index) Digest() (v1.Hash, error) {
	h, _, err := v1.SHA256(bytes.NewReader(x.raw))
	return h, err
}
func (x *index) Size() (int64, error)         { return int64(len(x.raw)), nil }
func (x *index) RawManifest() ([]byte, error) { return x.raw, nil }
func (x *index) IndexManifest() (*v1.IndexManifest, error) {
	return v1.ParseIndexManifest(bytes.NewReader(x.raw))
}
func (x *index) Image(h v1.Hash) (v1.Image, error) {
	if a, ok := x.children[h]; ok && a.Image != nil {
		return a.Image, nil
	}
	return nil, fmt.Errorf("convert: no image %s in the converted index", h)
}
func (x *index) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	if a, ok := x.children[h]; ok && a.Index != nil {
		return a.Index, nil
	}
	return nil, fmt.Errorf("convert: no index %s in the converted index", h)
}

// fileLayer is a layer blob spooled in the work dir.
type fileLayer struct {
	path           string
	digest, diffID v1.Hash
	size           int64
	mediaType      types.MediaType
}

var _ v1.Layer = (*fileLayer)(nil)

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	br := newBufReader(f)
	r, closeDec, err := decompress(br, l.mediaType)
	if err != nil {
		f.Close()
		return nil, err
	}
	return readCloser{Reader: r, close: func() error { closeDec(); return f.Close() }}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }
