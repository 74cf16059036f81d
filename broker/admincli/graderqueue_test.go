package admincli_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/adminapi/adminapitest"
)

// A graderqueue platform is registered with its key, and with legacy
// tokens only when asked; they can be turned off and on again.
func TestGraderqueuePlatform(t *testing.T) {
	t.Parallel()
	env := adminapitest.Start(t)
	env.Service.SetProtocols(broker.ProtocolGradebroker, broker.ProtocolGraderqueue)
	keyFile := filepath.Join(t.TempDir(), "fioi.pub.pem")
	if err := os.WriteFile(keyFile, []byte(adminapitest.PublicKeyPEM(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	legacy := func(name string) bool {
		t.Helper()
		p, err := env.DB.PlatformByName(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		return p.LegacyTokens
	}
	run(t, env, "platform", "add", "nokey", "--protocol", "graderqueue").want(t, 1, nil, []string{"public key"})
	ok(t, run(t, env, "platform", "add", "fioi", "--protocol", "graderqueue", "--key", keyFile, "--legacy-tokens"),
		"protocol:", "graderqueue", "legacy tokens:", "yes")
	ok(t, run(t, env, "platform", "add", "new", "--protocol", "graderqueue", "--key", keyFile), "legacy tokens:", "no")
	if !legacy("fioi") || legacy("new") {
		t.Errorf("legacy tokens: fioi %v, new %v; want fioi only", legacy("fioi"), legacy("new"))
	}
	ok(t, run(t, env, "platform", "update", "fioi", "--legacy-tokens=false"), "legacy tokens:", "no")
	if legacy("fioi") {
		t.Error("--legacy-tokens=false left them on")
	}
	ok(t, run(t, env, "platform", "update", "new", "--legacy-tokens"), "legacy tokens:", "yes")
	if !legacy("new") {
		t.Error("--legacy-tokens did not turn them on")
	}
}
