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
