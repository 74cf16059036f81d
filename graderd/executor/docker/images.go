package docker

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/gradebroker/gradebroker/graderd/executor"
)

// Where an executor's images come from (Images.Source).
const (
	// SourceEngine: images already on the engine; nothing is fetched.
	SourceEngine = "engine"
	// SourceRegistry: pulled from the registry the operator names, with
	// its credentials, before each run.
	SourceRegistry = "registry"
	// SourceArchive: loaded from an image archive (`docker save` output)
	// the job brings, by URL or by a path on the grading server.
	SourceArchive = "archive"
)

// Defaults of Images.
const (
	// DefaultMaxImageSize bounds a pulled image or a loaded archive.
	DefaultMaxImageSize = 2 << 30
	// DefaultFetchTimeout bounds fetching an image archive by URL.
	DefaultFetchTimeout = 5 * time.Minute
)

// Images says which images an executor runs and where they come from.
// Its fields are read-only once a run started.
type Images struct {
	// Allowed are the patterns (path.Match, against the reference as the
	// job writes it) of the images a job may name in its jobdata
	// ("image"); none means a job may not name one.
	Allowed []string
	// Source is SourceEngine (""), SourceRegistry or SourceArchive.
	Source string
	// Registry is where SourceRegistry pulls from, with its credentials.
	Registry Registry
	// MaxSize bounds a pulled image or an archive, in bytes; 0 means
	// DefaultMaxImageSize.
	MaxSize int64
	// Remove removes the job's image after its run (pulled or on the
	// engine). Images loaded from an archive are always removed: they are
	// the job's own.
	Remove bool
	// ArchiveURLs are the URL prefixes an archive may be fetched from
	// ("https://files.example.org/submissions/"); ArchiveDirs the
	// directories of the grading server it may be read from.
	ArchiveURLs []string
	ArchiveDirs []string
	// FetchTimeout bounds fetching an archive; 0 means DefaultFetchTimeout.
	FetchTimeout time.Duration
	// WorkRoot holds archives while they are loaded; "" means the
	// system's temporary directory.
	WorkRoot string
	// HTTP fetches archives; nil means a client of our own.
	HTTP *http.Client
}

// Registry is a registry images are pulled from, and how to log in.
type Registry struct {
	// Address is the registry's host[:port], as image references name it
	// ("registry.example.org:5000"); "docker.io" for Docker Hub.
	Address string
	// Username and Password log in; both empty pull anonymously.
	Username string
	Password string
}

// imageRequest is what a job's jobdata may say about its image.
type imageRequest struct {
	Image   string      `json:"image"`
	Archive *archiveRef `json:"image_archive"`
}

// archiveRef names an image archive: a URL or a path on the grading
// server, and optionally its SHA-256 in hex.
type archiveRef struct {
	URL    string `json:"url"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

// parseImageRequest reads the image fields of a job's jobdata; jobdata
// that is not an object names no image.
func parseImageRequest(jobdata []byte) (imageRequest, error) {
	var r imageRequest
	t := bytes.TrimSpace(jobdata)
	if len(t) == 0 || t[0] != '{' {
		return r, nil
	}
	if err := json.Unmarshal(t, &r); err != nil {
		return r, jobErrorf("jobdata: the image fields are malformed: %v", err)
	}
	return r, nil
}

// jobError is an error the job caused (an image it may not use, an
// archive too large): its run ends FATAL, since every server would refuse
// it the same way.
type jobError struct{ msg string }

func (e *jobError) Error() string { return e.msg }

func jobErrorf(format string, args ...any) error {
	return &jobError{fmt.Sprintf(format, args...)}
}

// resultOf turns an error of preparing a run into its Result: FATAL when
// the job caused it, TEMPORARY when the machine did (an engine or a
// registry out of reach: another server may do better).
func resultOf(err error) executor.Result {
	if je := (*jobError)(nil); errors.As(err, &je) {
		return executor.Fatal(err.Error())
	}
	return executor.Temporary(err.Error())
}

// allowed reports whether ref matches one of im.Allowed.
func (im *Images) allowed(ref string) bool {
	for _, p := range im.Allowed {
		if ok, _ := path.Match(p, ref); ok {
			return true
		}
	}
	return false
}

func (im *Images) maxSize() int64 {
	if im.MaxSize > 0 {
		return im.MaxSize
	}
	return DefaultMaxImageSize
}

// preparedImage is the image a run uses, and how to let go of it.
type preparedImage struct {
	ref    string
	remove bool // remove ref after the run
}

// prepare makes the image of a run available on the engine: def (the
// executor's own, "" when it has none) unless the job names one, which
// must be allowed. loadAs is the name a loaded archive's image gets.
func (im *Images) prepare(ctx context.Context, e *Engine, def string, req imageRequest, loadAs string) (preparedImage, error) {
	ref := req.Image
	switch {
	case req.Archive != nil && im.Source != SourceArchive:
		return preparedImage{}, jobErrorf("jobdata: image_archive: this executor does not load image archives (its image source is %q)", im.sourceName())
	case req.Archive != nil:
		return im.loadArchive(ctx, e, *req.Archive, ref, loadAs)
	case ref == "" && def == "":
		return preparedImage{}, jobErrorf("jobdata: image: missing; this executor runs the image the job names")
	case ref == "":
		ref = def
	case ref != def && !im.allowed(ref):
		if def == "" {
			return preparedImage{}, jobErrorf("jobdata: image: %q is not an image this executor may run; the operator allows images by pattern (images: %q)", ref, im.Allowed)
		}
		return preparedImage{}, jobErrorf("jobdata: image: this executor runs its own image %s; a job may name its own image only where the executor's images patterns allow it, and %q matches none of %q", def, ref, im.Allowed)
	}
	if _, err := reference.ParseNormalizedNamed(ref); err != nil {
		return preparedImage{}, jobErrorf("jobdata: image: %q is not an image reference: %v", ref, err)
	}
	switch im.Source {
	case SourceRegistry:
		if err := im.pull(ctx, e, ref); err != nil {
			return preparedImage{}, err
		}
	case SourceArchive:
		if ref != def {
			return preparedImage{}, jobErrorf("jobdata: image_archive: missing; this executor loads the job's image from an archive")
		}
	}
	if im.Source != SourceRegistry {
		if _, err := e.cli.ImageInspect(ctx, ref); err != nil {
			if errdefs.IsNotFound(err) {
				if ref == def {
					return preparedImage{}, fmt.Errorf("the executor's image %s is not on the engine; load or build it there (this server gets no job of the executor until it is)", ref)
				}
				return preparedImage{}, jobErrorf("image %s is not on the grading server's engine", ref)
			}
			return preparedImage{}, fmt.Errorf("inspecting image %s: %w", ref, err)
		}
	}
	return preparedImage{ref: ref, remove: im.Remove && ref != def}, nil
}

func (im *Images) sourceName() string {
	if im.Source == "" {
		return SourceEngine
	}
	return im.Source
}

// release removes the run's image when it should go. An image another run
// still uses stays; that run's release removes it.
func (p preparedImage) release(ctx context.Context, e *Engine) error {
	if !p.remove {
		return nil
	}
	_, err := e.cli.ImageRemove(ctx, p.ref, client.ImageRemoveOptions{PruneChildren: true})
	if err == nil || errdefs.IsNotFound(err) || errdefs.IsConflict(err) {
		return nil
	}
	return err
}

// pull pulls ref from the executor's registry, with its credentials,
// stopping once the layers' sizes add up to more than MaxSize.
func (im *Images) pull(ctx context.Context, e *Engine, ref string) error {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return jobErrorf("jobdata: image: %q is not an image reference: %v", ref, err)
	}
	if dom := reference.Domain(named); dom != im.Registry.Address {
		return jobErrorf("jobdata: image: %s is on %s, but this executor pulls only from %s", ref, dom, im.Registry.Address)
	}
	var opts client.ImagePullOptions
	if im.Registry.Username != "" || im.Registry.Password != "" {
		auth, err := authconfig.Encode(registry.AuthConfig{Username: im.Registry.Username, Password: im.Registry.Password, ServerAddress: im.Registry.Address})
		if err != nil {
			return err
		}
		opts.RegistryAuth = auth
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resp, err := e.cli.ImagePull(ctx, ref, opts)
	if err != nil {
		return fmt.Errorf("pulling %s: %w", ref, err)
	}
	defer resp.Close()
	sizes := map[string]int64{}
	var total int64
	for msg, err := range resp.JSONMessages(ctx) {
		if err != nil {
			return pullError(ref, err)
		}
		if msg.Error != nil {
			return pullError(ref, msg.Error)
		}
		if msg.Progress != nil && msg.ID != "" && msg.Progress.Total > sizes[msg.ID] {
			total += msg.Progress.Total - sizes[msg.ID]
			sizes[msg.ID] = msg.Progress.Total
			if total > im.maxSize() {
				return jobErrorf("image %s is larger than this executor's limit of %d bytes (max_image_size); its pull was stopped", ref, im.maxSize())
			}
		}
	}
	in, err := e.cli.ImageInspect(ctx, ref)
	if err != nil {
		return fmt.Errorf("inspecting pulled image %s: %w", ref, err)
	}
	if in.Size > im.maxSize() {
		_, _ = e.cli.ImageRemove(context.WithoutCancel(ctx), ref, client.ImageRemoveOptions{PruneChildren: true})
		return jobErrorf("image %s is %d bytes, more than this executor's limit of %d (max_image_size)", ref, in.Size, im.maxSize())
	}
	return nil
}

// pullError says why a pull failed: an image the registry does not have
// is the job's fault, anything else may pass.
func pullError(ref string, err error) error {
	var je *jsonstream.Error
	msg := err.Error()
	if errors.As(err, &je) {
		msg = je.Message
	}
	if errdefs.IsNotFound(err) || strings.Contains(msg, "not found") || strings.Contains(msg, "manifest unknown") {
		return jobErrorf("image %s: %s", ref, msg)
	}
	return fmt.Errorf("pulling %s: %s", ref, msg)
}

// loadedRepo is the repository of images loaded from archives.
const loadedRepo = "gradebroker-run"

// repoComponent makes s a valid path component of an image reference:
// lower case letters, digits and single dashes.
func repoComponent(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	out := strings.TrimSuffix(b.String(), "-")
	if out == "" {
		return "graderd"
	}
	return out
}

// loadArchive fetches the job's image archive and loads it under the run's
// own name (loadedName). The archive's own names are dropped: a job's
// archive must not re-tag the engine's images (the runner's, a service's,
// another job's). want, if set, picks the image among several the archive
// holds.
func (im *Images) loadArchive(ctx context.Context, e *Engine, ref archiveRef, want, name string) (preparedImage, error) {
	f, err := im.fetchArchive(ctx, ref)
	if err != nil {
		return preparedImage{}, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	plan, err := planRetag(f, want, name)
	if err != nil {
		return preparedImage{}, err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(plan.write(f, pw)) }()
	res, err := e.cli.ImageLoad(ctx, pr, client.ImageLoadWithQuiet(true))
	if err != nil {
		pr.CloseWithError(err)
		return preparedImage{}, jobErrorf("loading the job's image archive: %v", err)
	}
	defer res.Close()
	out, err := io.ReadAll(io.LimitReader(res, 1<<20))
	pr.Close()
	if err != nil {
		return preparedImage{}, fmt.Errorf("loading the job's image archive: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	loaded := false
	for {
		var m jsonstream.Message
		if dec.Decode(&m) != nil {
			break
		}
		if m.Error != nil {
			return preparedImage{}, jobErrorf("the engine could not load the job's image archive: %s", m.Error.Message)
		}
		if strings.Contains(m.Stream, name) {
			loaded = true
		}
	}
	p := preparedImage{ref: name, remove: true}
	if !loaded {
		// The engine may name it differently (docker.io/ prefix) but
		// still have it.
		if _, err := e.cli.ImageInspect(ctx, name); err != nil {
			return preparedImage{}, jobErrorf("the job's image archive loaded no image (%s)", strings.TrimSpace(string(out)))
		}
	}
	return p, nil
}

// fetchArchive copies the job's archive into a file of its own, within
// MaxSize, from an allowed URL or directory, and checks its SHA-256 when
// the job gave one.
func (im *Images) fetchArchive(ctx context.Context, ref archiveRef) (*os.File, error) {
	var src io.ReadCloser
	switch {
	case ref.URL != "" && ref.Path != "":
		return nil, jobErrorf("jobdata: image_archive: give url or path, not both")
	case ref.URL != "":
		u, err := url.Parse(ref.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.User != nil || u.Host == "" {
			return nil, jobErrorf("jobdata: image_archive.url: %q is not an http(s) URL without credentials", ref.URL)
		}
		if !urlUnder(u, im.ArchiveURLs) {
			return nil, jobErrorf("jobdata: image_archive.url: %s is not under a URL this executor fetches archives from (archive_urls: %q)", u.Redacted(), im.ArchiveURLs)
		}
		timeout := im.FetchTimeout
		if timeout <= 0 {
			timeout = DefaultFetchTimeout
		}
		fctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		req, err := http.NewRequestWithContext(fctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, jobErrorf("jobdata: image_archive.url: %v", err)
		}
		hc := im.HTTP
		if hc == nil {
			hc = &http.Client{CheckRedirect: func(r *http.Request, _ []*http.Request) error {
				if !urlUnder(r.URL, im.ArchiveURLs) {
					return fmt.Errorf("redirected to %s, outside archive_urls", r.URL.Redacted())
				}
				return nil
			}}
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("fetching the job's image archive: %w", err)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				return nil, fmt.Errorf("fetching the job's image archive: %s", resp.Status)
			}
			return nil, jobErrorf("fetching the job's image archive %s: %s", u.Redacted(), resp.Status)
		}
		if resp.ContentLength > im.maxSize() {
			resp.Body.Close()
			return nil, jobErrorf("the job's image archive is %d bytes, more than this executor's limit of %d (max_image_size)", resp.ContentLength, im.maxSize())
		}
		src = resp.Body
	case ref.Path != "":
		p := filepath.Clean(ref.Path)
		if !filepath.IsAbs(p) {
			return nil, jobErrorf("jobdata: image_archive.path: %q is not absolute", ref.Path)
		}
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, jobErrorf("jobdata: image_archive.path: %v", err)
		}
		if !inDirs(real, im.ArchiveDirs) {
			return nil, jobErrorf("jobdata: image_archive.path: %s is not in a directory this executor loads archives from (archive_dirs: %q)", ref.Path, im.ArchiveDirs)
		}
		f, err := os.Open(real)
		if err != nil {
			return nil, jobErrorf("jobdata: image_archive.path: %v", err)
		}
		src = f
	default:
		return nil, jobErrorf("jobdata: image_archive: give url or path")
	}
	defer src.Close()
	root := im.WorkRoot
	if root == "" {
		root = os.TempDir()
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(root, "image-archive-*.tar")
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(src, im.maxSize()+1))
	if err != nil {
		return fail(fmt.Errorf("fetching the job's image archive: %w", err))
	}
	if n > im.maxSize() {
		return fail(jobErrorf("the job's image archive is larger than this executor's limit of %d bytes (max_image_size)", im.maxSize()))
	}
	if ref.SHA256 != "" && !strings.EqualFold(ref.SHA256, hex.EncodeToString(h.Sum(nil))) {
		return fail(jobErrorf("jobdata: image_archive.sha256: the archive's SHA-256 is %x, not %s", h.Sum(nil), ref.SHA256))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	return f, nil
}

// urlUnder reports whether u lies under one of prefixes (http(s) URLs):
// the same scheme and host (with its port), and a path at or below the
// prefix's, at a segment boundary, without a ".." segment. A plain string
// prefix would let "https://files.example.org" admit
// "https://files.example.org.evil.net/" and "/sub" admit "/subway".
func urlUnder(u *url.URL, prefixes []string) bool {
	if slices.Contains(strings.Split(u.Path, "/"), "..") {
		return false
	}
	for _, p := range prefixes {
		pu, err := url.Parse(p)
		if err != nil || pu.Host == "" || !strings.EqualFold(pu.Scheme, u.Scheme) || !strings.EqualFold(pu.Host, u.Host) {
			continue
		}
		dir, path := pu.EscapedPath(), u.EscapedPath()
		if dir == "" || dir == "/" || path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/") {
			return true
		}
	}
	return false
}

// inDirs reports whether path (clean, absolute, symlinks resolved) lies
// inside one of dirs.
func inDirs(path string, dirs []string) bool {
	for _, d := range dirs {
		real, err := filepath.EvalSymlinks(d)
		if err != nil {
			continue
		}
		if strings.HasPrefix(path, real+"/") {
			return true
		}
	}
	return false
}

// maxManifest bounds the archive's manifest.json and index.json.
const maxManifest = 1 << 20

// retagged is the new manifest.json and index.json of an image archive.
type retagged struct {
	manifest, index []byte
}

// planRetag reads the image archive in f and makes its new manifests: the
// chosen image (want among its RepoTags, or the only one) is named name,
// the archive's other images are dropped from manifest.json, and the OCI
// index's image names go.
func planRetag(f *os.File, want, name string) (retagged, error) {
	manifest, index, err := readManifests(f)
	if err != nil {
		return retagged{}, err
	}
	var entries []map[string]json.RawMessage
	if err := json.Unmarshal(manifest, &entries); err != nil || len(entries) == 0 {
		return retagged{}, jobErrorf("the job's image archive has no valid manifest.json (make it with docker save)")
	}
	pick := -1
	for i, e := range entries {
		var tags []string
		_ = json.Unmarshal(e["RepoTags"], &tags)
		for _, t := range tags {
			if want != "" && (t == want || reference.FamiliarString(mustParse(t)) == want) {
				pick = i
			}
		}
	}
	switch {
	case pick < 0 && want == "" && len(entries) == 1:
		pick = 0
	case pick < 0 && want == "":
		return retagged{}, jobErrorf("the job's image archive holds %d images; name the one to run in jobdata.image", len(entries))
	case pick < 0:
		return retagged{}, jobErrorf("the job's image archive holds no image named %s", want)
	}
	chosen := entries[pick]
	tags, _ := json.Marshal([]string{name})
	chosen["RepoTags"] = tags
	var r retagged
	if r.manifest, err = json.Marshal([]map[string]json.RawMessage{chosen}); err != nil {
		return retagged{}, err
	}
	if index != nil {
		if r.index, err = stripIndexNames(index); err != nil {
			return retagged{}, jobErrorf("the job's image archive has a malformed index.json: %v", err)
		}
	}
	return r, nil
}

// write copies the archive in f to w with the new manifests, and without
// the legacy "repositories" file, which names images too.
func (r retagged) write(f *os.File, w io.Writer) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	tr, tw := tar.NewReader(f), tar.NewWriter(w)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("the job's image archive is not a valid tar file: %w", err)
		}
		var body []byte
		switch path.Clean(h.Name) {
		case "repositories":
			continue
		case "manifest.json":
			body = r.manifest
		case "index.json":
			body = r.index
		}
		if body != nil {
			h.Size = int64(len(body))
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if _, err := tw.Write(body); err != nil {
				return err
			}
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	return tw.Close()
}

func mustParse(s string) reference.Named {
	n, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		n, _ = reference.ParseNormalizedNamed("invalid")
	}
	return n
}

// readManifests returns the archive's manifest.json and index.json (nil
// when absent).
func readManifests(f *os.File) (manifest, index []byte, err error) {
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, jobErrorf("the job's image archive is not a valid tar file: %v", err)
		}
		var dst *[]byte
		switch path.Clean(h.Name) {
		case "manifest.json":
			dst = &manifest
		case "index.json":
			dst = &index
		default:
			continue
		}
		if h.Size > maxManifest {
			return nil, nil, jobErrorf("the job's image archive has a %s of %d bytes", h.Name, h.Size)
		}
		if *dst, err = io.ReadAll(tr); err != nil {
			return nil, nil, jobErrorf("reading the job's image archive: %v", err)
		}
	}
	if manifest == nil {
		return nil, nil, jobErrorf("the job's image archive has no manifest.json (make it with docker save)")
	}
	return manifest, index, nil
}

// imageNameAnnotations name an image in an OCI index; an engine that loads
// through the index (containerd's image store) would tag the image with
// them.
var imageNameAnnotations = []string{"io.containerd.image.name", "org.opencontainers.image.ref.name"}

// stripIndexNames removes the image names from an OCI index.json.
func stripIndexNames(index []byte) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(index, &doc); err != nil {
		return nil, err
	}
	var manifests []map[string]json.RawMessage
	if raw, ok := doc["manifests"]; ok {
		if err := json.Unmarshal(raw, &manifests); err != nil {
			return nil, err
		}
	}
	for _, m := range manifests {
		var ann map[string]string
		if raw, ok := m["annotations"]; ok {
			if err := json.Unmarshal(raw, &ann); err != nil {
				return nil, err
			}
			for _, k := range imageNameAnnotations {
				delete(ann, k)
			}
			b, _ := json.Marshal(ann)
			m["annotations"] = b
		}
	}
	b, err := json.Marshal(manifests)
	if err != nil {
		return nil, err
	}
	doc["manifests"] = b
	return json.Marshal(doc)
}

// File is one entry of an image ImportImage makes.
type File struct {
	// Name is the path in the image, without the leading slash.
	Name string
	// Mode is the permission bits (0o755, 0o1777).
	Mode int64
	// Dir makes a directory; else Body is the file's content.
	Dir  bool
	Body []byte
}

// ImportImage makes image ref on the engine from files alone, as `docker
// import` of a root file system does: no registry, no build. changes are
// Dockerfile instructions applied to the image (ENTRYPOINT, USER, ENV).
// Files and directories belong to root.
func (e *Engine) ImportImage(ctx context.Context, ref string, files []File, changes []string) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	now := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Mode: f.Mode, ModTime: now, Typeflag: tar.TypeReg, Size: int64(len(f.Body))}
		if f.Dir {
			h.Typeflag, h.Size, h.Name = tar.TypeDir, 0, strings.TrimSuffix(f.Name, "/")+"/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !f.Dir {
			if _, err := tw.Write(f.Body); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	res, err := e.cli.ImageImport(ctx, client.ImageImportSource{Source: &buf, SourceName: "-"}, ref, client.ImageImportOptions{Changes: changes})
	if err != nil {
		return fmt.Errorf("importing image %s: %w", ref, err)
	}
	defer res.Close()
	out, err := io.ReadAll(res)
	if err != nil {
		return fmt.Errorf("importing image %s: %w", ref, err)
	}
	if bytes.Contains(out, []byte(`"errorDetail"`)) {
		return fmt.Errorf("importing image %s: %s", ref, strings.TrimSpace(string(out)))
	}
	return nil
}

// HasImage reports whether the engine has image ref.
func (e *Engine) HasImage(ctx context.Context, ref string) (bool, error) {
	_, err := e.cli.ImageInspect(ctx, ref)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// loadedName is the name a run's image loaded from an archive gets: it
// names the server and lease, so that a restarted graderd finds what a
// crashed one loaded (ReapOrphans).
func loadedName(server string, job executor.Job) string {
	return loadedRepo + "/" + repoComponent(server) + "-lease-" + strconv.FormatInt(job.LeaseID, 10) + ":image"
}
