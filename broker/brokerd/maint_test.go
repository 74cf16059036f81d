package brokerd

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestMaintConfigFromFileAndFlags(t *testing.T) {
	t.Parallel()
	if err := DefaultMaintConfig().Validate(); err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(file, []byte(`
retention: 72h
alert_webhook_url: https://hooks.example/abc
alert_smtp_addr: mail.example:587
alert_smtp_from: gb@example.org
alert_smtp_to: [ops@example.org]
alert_smtp_user: gb
alert_smtp_password_file: /etc/gradebroker/smtp-password
alert_fail_ratio: 0.5
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseServeFlags([]string{"--config", file, "--alert-smtp-to", "a@example.org, b@example.org",
		"--alert-queue-age", "20m", "--retention-batch", "100"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultMaintConfig()
	want.Retention = 72 * time.Hour
	want.AlertWebhookURL = "https://hooks.example/abc"
	want.AlertSMTPAddr = "mail.example:587"
	want.AlertSMTPFrom = "gb@example.org"
	want.AlertSMTPTo = []string{"a@example.org", "b@example.org"}
	want.AlertSMTPUser = "gb"
	want.AlertSMTPPasswordFile = "/etc/gradebroker/smtp-password"
	want.AlertFailRatio = 0.5
	want.AlertQueueAge = 20 * time.Minute
	want.RetentionBatch = 100
	if diff := cmp.Diff(want, cfg.Maint); diff != "" {
		t.Errorf("Maint (-want +got):\n%s", diff)
	}
}

func TestMaintConfigValidateNamesTheField(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		change func(*MaintConfig)
		field  string
	}{
		{func(c *MaintConfig) { c.Retention = time.Minute }, "retention:"},
		{func(c *MaintConfig) { c.RetentionBatch = 0 }, "retention_batch:"},
		{func(c *MaintConfig) { c.AlertFailRatio = 20 }, "alert_fail_ratio:"},
		{func(c *MaintConfig) { c.AlertInterval = 0 }, "alert_interval:"},
		{func(c *MaintConfig) { c.AlertWebhookURL = "hooks.example/abc" }, "alert_webhook_url:"},
		{func(c *MaintConfig) { c.AlertSMTPAddr = "mail.example:25" }, "alert_smtp_from:"},
		{func(c *MaintConfig) {
			c.AlertSMTPAddr, c.AlertSMTPFrom, c.AlertSMTPTo, c.AlertSMTPUser = "mail.example:25", "a@b", []string{"c@d"}, "gb"
		}, "alert_smtp_password_file"},
	} {
		c := DefaultMaintConfig()
		tt.change(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("Validate() = %v, want an error naming %s", err, tt.field)
		}
	}
}
