package console

import (
	"bytes"
	"strings"
	"testing"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// An executor whose graders run without a sandbox stands out on the
// servers page; the others show their sandbox plainly.
func TestServersPageShowsAMissingSandbox(t *testing.T) {
	t.Parallel()
	pages, err := parseTemplates()
	if err != nil {
		t.Fatal(err)
	}
	data := &gradebrokerv1.ListServersResponse{Servers: []*gradebrokerv1.Server{{Name: "g1", Connected: true, Version: "1.4.0",
		Executors: []*gradebrokerv1.ExecutorInfo{{Name: "default", Type: "exec", Sandbox: "crun"}, {Name: "gpu", Type: "exec", Sandbox: "none"}}}}}
	var buf bytes.Buffer
	if err := pages["servers"].ExecuteTemplate(&buf, "live", page{User: &user{Name: "op"}, Data: data}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{`<td class="version">1.4.0</td>`,
		`default: exec (crun), <strong class="nosandbox">gpu: exec (NO SANDBOX: graders run with graderd's powers)</strong>`} {
		if !strings.Contains(out, want) {
			t.Errorf("the servers page lacks %s:\n%s", want, out)
		}
	}
}

// A platform that may send graderqueue's weaker legacy tokens stands out on
// the registry page.
func TestRegistryPageShowsLegacyTokens(t *testing.T) {
	t.Parallel()
	pages, err := parseTemplates()
	if err != nil {
		t.Fatal(err)
	}
	data := registryData{Platforms: []*gradebrokerv1.Platform{
		{Name: "fioi", Protocol: "graderqueue", LegacyTokens: true},
		{Name: "mooc", Protocol: "native"},
	}}
	var buf bytes.Buffer
	if err := pages["registry"].ExecuteTemplate(&buf, "content", page{User: &user{Name: "op"}, Data: data}); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if want := `<th scope="row">fioi</th><td>graderqueue, <strong class="nosandbox"`; !strings.Contains(out, want) {
		t.Errorf("the registry page does not flag fioi's legacy tokens (want %s):\n%s", want, out)
	}
	if strings.Count(out, "legacy tokens accepted") != 1 {
		t.Errorf("the registry page flags legacy tokens %d times, want once (fioi only):\n%s", strings.Count(out, "legacy tokens accepted"), out)
	}
}
