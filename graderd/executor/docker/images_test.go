package docker_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/moby/moby/client"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
	"github.com/gradebroker/gradebroker/graderd/executor"
	"github.com/gradebroker/gradebroker/graderd/executor/docker"
	"github.com/gradebroker/gradebroker/graderd/executor/docker/dockertest"
)

// saveImage writes `docker save` of ref, with its archive's image names
// replaced by tags (none: left as they are).
func saveImage(t *testing.T, eng *docker.Engine, ref string, tags ...string) []byte {
	t.Helper()
	res, err := eng.Client().ImageSave(context.Background(), []string{ref})
	if err != nil {
		t.Fatal(err)
	}
	defer res.Close()
	raw, err := io.ReadAll(res)
	if err != nil {
		t.Fatal(err)
	}
	if tags == nil {
		return raw
	}
	var out bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(raw)), tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if h.Name == "manifest.json" {
			var m []map[string]any
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatal(err)
			}
			m[0]["RepoTags"] = tags
			body, _ = json.Marshal(m)
			h.Size = int64(len(body))
		}
		_ = tw.WriteHeader(h)
		_, _ = tw.Write(body)
	}
	_ = tw.Close()
	return out.Bytes()
}

func imageID(t *testing.T, eng *docker.Engine, ref string) string {
	t.Helper()
	in, err := eng.Client().ImageInspect(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return in.ID
}

// loadedImages lists the images loaded for server's runs.
func loadedImages(t *testing.T, eng *docker.Engine, server string) []string {
	t.Helper()
	list, err := eng.Client().ImageList(context.Background(), client.ImageListOptions{
		Filters: make(client.Filters).Add("reference", "gradebroker-run/"+server+"-*"),
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, im := range list.Items {
		out = append(out, im.RepoTags...)
	}
	return out
}

func TestArchiveSource(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, nil)
	eng := e.Engine
	// A victim: an image of the engine's whose name the archive claims.
	victim := dockertest.GoImage(t, eng, "kvdb", "./examples/kvdb", "")
	victimID := imageID(t, eng, victim)
	archive := saveImage(t, eng, e.Image, victim)
	sum := sha256.Sum256(archive)
	mux := http.NewServeMux()
	mux.HandleFunc("/files/probe.tar", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(archive) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "probe.tar"), archive, 0o644); err != nil {
		t.Fatal(err)
	}
	e.Image = "" // the job brings its grader
	e.Images = docker.Images{Source: docker.SourceArchive, ArchiveURLs: []string{srv.URL + "/files/"}, ArchiveDirs: []string{dir}, WorkRoot: t.TempDir()}
	job := func(archive map[string]any) executor.Result {
		jd, _ := json.Marshal(map[string]any{"probe": "exit", "code": 0, "stdout": `{"loaded": true}`, "image_archive": archive})
		return run(t, e, string(jd), time.Minute)
	}
	for _, a := range []map[string]any{
		{"url": srv.URL + "/files/probe.tar", "sha256": hex.EncodeToString(sum[:])},
		{"path": filepath.Join(dir, "probe.tar")},
	} {
		if res := job(a); res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || string(res.Result) != `{"loaded": true}` {
			t.Errorf("archive %v: outcome %v result %s error %q", a, res.Outcome, res.Result, res.Error)
		}
	}
	if id := imageID(t, eng, victim); id != victimID {
		t.Errorf("the job's archive re-tagged the engine's %s: %s, was %s", victim, id, victimID)
	}
	if left := loadedImages(t, eng, e.Server); len(left) > 0 {
		t.Errorf("loaded images left after the runs: %v", left)
	}
	for _, tc := range []struct {
		archive map[string]any
		want    string
	}{
		{map[string]any{"url": "https://elsewhere.example.org/files/probe.tar"}, "not under a URL this executor fetches archives from"},
		{map[string]any{"url": srv.URL + "/files/probe.tar", "sha256": strings.Repeat("0", 64)}, "SHA-256"},
		{map[string]any{"path": "/etc/passwd"}, "not in a directory this executor loads archives from"},
		{map[string]any{"path": filepath.Join(dir, "../probe.tar")}, "image_archive.path"},
		{map[string]any{}, "give url or path"},
	} {
		if res := job(tc.archive); res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, tc.want) {
			t.Errorf("archive %v: outcome %v error %q; want FATAL saying %q", tc.archive, res.Outcome, res.Error, tc.want)
		}
	}
	e.Images.MaxSize = int64(len(archive) / 2)
	if res := job(map[string]any{"url": srv.URL + "/files/probe.tar"}); res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "max_image_size") {
		t.Errorf("an archive over the size limit: outcome %v error %q", res.Outcome, res.Error)
	}
}

// TestReapRemovesLoadedImages: an image a run loaded, left by a crash
// (here: tagged by hand as a run's would be), goes at the next start.
func TestReapRemovesLoadedImages(t *testing.T) {
	t.Parallel()
	e := probeExecutor(t, nil)
	tag := "gradebroker-run/" + e.Server + "-lease-99:image"
	if _, err := e.Engine.Client().ImageTag(context.Background(), client.ImageTagOptions{Source: e.Image, Target: tag}); err != nil {
		t.Fatal(err)
	}
	if n, err := e.ReapOrphans(context.Background()); err != nil || n != 1 {
		t.Errorf("ReapOrphans = %d, %v; want the one image", n, err)
	}
	if left := loadedImages(t, e.Engine, e.Server); len(left) > 0 {
		t.Errorf("images left: %v", left)
	}
	if _, err := e.Engine.Client().ImageInspect(context.Background(), e.Image); err != nil {
		t.Errorf("the image the run's was tagged from went too: %v", err)
	}
}

// pushImage pushes an image made of bin alone (as /app, its entrypoint)
// to the registry at host, as name:tag, over the distribution API, and
// returns the size of its layer.
func pushImage(t *testing.T, host, user, password, name, tag, bin string) int {
	t.Helper()
	body, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	_ = tw.WriteHeader(&tar.Header{Name: "app", Mode: 0o755, Size: int64(len(body))})
	_, _ = tw.Write(body)
	_ = tw.WriteHeader(&tar.Header{Name: "tmp/", Mode: 0o1777, Typeflag: tar.TypeDir})
	_ = tw.Close()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(raw.Bytes())
	_ = zw.Close()
	digest := func(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }
	config, _ := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH, "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/app"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{digest(raw.Bytes())}},
	})
	do := func(method, path, ctype string, b []byte) {
		req, err := http.NewRequest(method, "http://"+host+path, bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth(user, password)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode >= 300 {
			msg, _ := io.ReadAll(resp.Body)
			t.Fatalf("%s %s: %s %s", method, path, resp.Status, msg)
		}
	}
	for _, b := range [][]byte{config, gz.Bytes()} {
		do(http.MethodPost, "/v2/"+name+"/blobs/uploads/?digest="+digest(b), "application/octet-stream", b)
	}
	manifest, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
		"config": map[string]any{"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config), "digest": digest(config)},
		"layers": []map[string]any{{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": gz.Len(), "digest": digest(gz.Bytes())}},
	})
	do(http.MethodPut, "/v2/"+name+"/manifests/"+tag, "application/vnd.docker.distribution.manifest.v2+json", manifest)
	return gz.Len()
}

// TestRegistrySource pulls a job's grader image from a registry on the
// loopback (go-containerregistry's, behind basic auth), which the engine
// reaches as an insecure local registry: with the executor's credentials,
// within its size limit, only from its own registry.
func TestRegistrySource(t *testing.T) {
	t.Parallel()
	const user, password = "grader", "s3cret"
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	repo := "course/" + dockertest.Name("probe")
	size := pushImage(t, host, user, password, repo, "1", dockertest.Binary(t, probePkg, ""))
	ref := host + "/" + repo + ":1"

	e := probeExecutor(t, nil)
	e.Image = "grader:unused"
	e.Images = docker.Images{Allowed: []string{host + "/course/*"}, Source: docker.SourceRegistry, Remove: true,
		Registry: docker.Registry{Address: host, Username: user, Password: password}}
	job := func(image string) executor.Result {
		jd, _ := json.Marshal(map[string]any{"probe": "exit", "code": 0, "stdout": `{"pulled": true}`, "image": image})
		return run(t, e, string(jd), time.Minute)
	}
	if res := job(ref); res.Outcome != gradebrokerv1.Outcome_OUTCOME_OK || string(res.Result) != `{"pulled": true}` {
		t.Errorf("outcome %v result %s error %q", res.Outcome, res.Result, res.Error)
	}
	if _, err := e.Engine.Client().ImageInspect(context.Background(), ref); err == nil {
		t.Error("the pulled image stayed after the run, though the executor removes images")
	}
	if res := job("docker.io/course/x:1"); res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "not an image this executor may run") && !strings.Contains(res.Error, "matches none") {
		t.Errorf("an image of another registry: outcome %v error %q", res.Outcome, res.Error)
	}
	e.Images.Allowed = append(e.Images.Allowed, "docker.io/*/*")
	if res := job("docker.io/course/x:1"); res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "pulls only from "+host) {
		t.Errorf("an allowed image of another registry: outcome %v error %q", res.Outcome, res.Error)
	}
	e.Images.MaxSize = int64(size / 2)
	if res := job(ref); res.Outcome != gradebrokerv1.Outcome_OUTCOME_FATAL || !strings.Contains(res.Error, "max_image_size") {
		t.Errorf("an image over the size limit: outcome %v error %q", res.Outcome, res.Error)
	}
	e.Images.MaxSize = 0
	e.Images.Registry.Password = "wrong"
	if res := job(ref); res.Outcome != gradebrokerv1.Outcome_OUTCOME_TEMPORARY {
		t.Errorf("a registry refusing the credentials: outcome %v error %q; want TEMPORARY (the server's configuration, not the job)", res.Outcome, res.Error)
	}
}
