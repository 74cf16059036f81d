package brokerd

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker/maint"
)

// MaintConfig is the part of Config for retention and alerts. Its keys sit
// at the top level of the YAML file like every other.
type MaintConfig struct {
	// Retention is how long final jobs and delivered deliveries are kept.
	Retention time.Duration `yaml:"retention"`
	// RetentionInterval is how often retention runs.
	RetentionInterval time.Duration `yaml:"retention_interval"`
	// RetentionBatch is how many rows one retention transaction deletes.
	RetentionBatch int `yaml:"retention_batch"`
	// CheckpointInterval is how often the WAL is checkpointed and truncated.
	CheckpointInterval time.Duration `yaml:"checkpoint_interval"`

	// AlertWebhookURL receives alerts as a JSON POST, if set.
	AlertWebhookURL string `yaml:"alert_webhook_url"`
	// AlertSMTPAddr is the mail server (host:port) for alert mails, if set;
	// AlertSMTPFrom and AlertSMTPTo are then required.
	AlertSMTPAddr string   `yaml:"alert_smtp_addr"`
	AlertSMTPFrom string   `yaml:"alert_smtp_from"`
	AlertSMTPTo   []string `yaml:"alert_smtp_to"`
	// AlertSMTPUser and AlertSMTPPasswordFile authenticate to the mail
	// server. The password is only ever read from the file.
	AlertSMTPUser         string `yaml:"alert_smtp_user"`
	AlertSMTPPasswordFile string `yaml:"alert_smtp_password_file"`
	// AlertInterval is how often the alert checks run; AlertRepeat the least
	// time between two alerts of one kind about one subject.
	AlertInterval time.Duration `yaml:"alert_interval"`
	AlertRepeat   time.Duration `yaml:"alert_repeat"`
	// AlertFailRatio, AlertFailWindow, AlertFailMin: alert when more than
	// this share of the final jobs of the window failed, counting at least
	// AlertFailMin.
	AlertFailRatio  float64       `yaml:"alert_fail_ratio"`
	AlertFailWindow time.Duration `yaml:"alert_fail_window"`
	AlertFailMin    int           `yaml:"alert_fail_min"`
	// AlertQueueAge: alert when a job has waited longer.
	AlertQueueAge time.Duration `yaml:"alert_queue_age"`
	// AlertWakeupFails: alert when a server failed to wake this many times.
	AlertWakeupFails int `yaml:"alert_wakeup_fails"`
	// AlertNoServerAfter: alert about jobs no connected server takes once
	// they waited this long.
	AlertNoServerAfter time.Duration `yaml:"alert_no_server_after"`
}

// DefaultMaintConfig returns the retention and alert defaults.
func DefaultMaintConfig() MaintConfig {
	return MaintConfig{
		Retention:          7 * 24 * time.Hour,
		RetentionInterval:  10 * time.Minute,
		RetentionBatch:     500,
		CheckpointInterval: 5 * time.Minute,
		AlertInterval:      30 * time.Second,
		AlertRepeat:        time.Hour,
		AlertFailRatio:     0.2,
		AlertFailWindow:    15 * time.Minute,
		AlertFailMin:       10,
		AlertQueueAge:      15 * time.Minute,
		AlertWakeupFails:   3,
		AlertNoServerAfter: time.Minute,
	}
}

// Validate names the first bad field.
func (c MaintConfig) Validate() error {
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"retention", c.Retention}, {"retention_interval", c.RetentionInterval}, {"checkpoint_interval", c.CheckpointInterval},
		{"alert_interval", c.AlertInterval}, {"alert_repeat", c.AlertRepeat}, {"alert_fail_window", c.AlertFailWindow},
		{"alert_queue_age", c.AlertQueueAge}, {"alert_no_server_after", c.AlertNoServerAfter}} {
		if d.v <= 0 {
			return fmt.Errorf("%s: must be positive, got %s", d.field, d.v)
		}
	}
	if c.Retention < time.Hour {
		return fmt.Errorf("retention: %s is under an hour; results would vanish before platforms or operators look", c.Retention)
	}
	if c.RetentionBatch < 1 || c.RetentionBatch > 10000 {
		return fmt.Errorf("retention_batch: %d is not between 1 and 10000", c.RetentionBatch)
	}
	if c.AlertFailRatio <= 0 || c.AlertFailRatio >= 1 {
		return fmt.Errorf("alert_fail_ratio: %g is not between 0 and 1 (0.2 means 20%%)", c.AlertFailRatio)
	}
	if c.AlertFailMin < 1 {
		return fmt.Errorf("alert_fail_min: must be at least 1, got %d", c.AlertFailMin)
	}
	if c.AlertWakeupFails < 1 {
		return fmt.Errorf("alert_wakeup_fails: must be at least 1, got %d", c.AlertWakeupFails)
	}
	if c.AlertWebhookURL != "" {
		u, err := url.Parse(c.AlertWebhookURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return errors.New("alert_webhook_url: must be an absolute http:// or https:// URL")
		}
	}
	smtpSet := c.AlertSMTPAddr != "" || c.AlertSMTPFrom != "" || len(c.AlertSMTPTo) > 0 || c.AlertSMTPUser != "" || c.AlertSMTPPasswordFile != ""
	if smtpSet {
		if err := c.smtp("").Check(); err != nil {
			return err
		}
		if (c.AlertSMTPUser == "") != (c.AlertSMTPPasswordFile == "") {
			return errors.New("alert_smtp_user and alert_smtp_password_file: set both or neither")
		}
	}
	return nil
}

func (c MaintConfig) smtp(password string) maint.SMTPConfig {
	return maint.SMTPConfig{Addr: c.AlertSMTPAddr, From: c.AlertSMTPFrom, To: c.AlertSMTPTo,
		User: c.AlertSMTPUser, Password: password}
}

// commaList is a flag of comma-separated values; repeating it adds more.
type commaList struct {
	list *[]string
	set  bool
}

func (l *commaList) String() string {
	if l.list == nil {
		return ""
	}
	return strings.Join(*l.list, ",")
}

func (l *commaList) Set(v string) error {
	if !l.set {
		*l.list = nil // the flag replaces the file's list
		l.set = true
	}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l.list = append(*l.list, s)
		}
	}
	return nil
}

// registerMaintFlags adds the retention and alert flags to fs.
func registerMaintFlags(fs *flag.FlagSet, c *MaintConfig) {
	fs.DurationVar(&c.Retention, "retention", c.Retention, "how long final jobs and delivered results are kept")
	fs.DurationVar(&c.RetentionInterval, "retention-interval", c.RetentionInterval, "how often old jobs are deleted")
	fs.IntVar(&c.RetentionBatch, "retention-batch", c.RetentionBatch, "rows deleted per transaction by retention")
	fs.DurationVar(&c.CheckpointInterval, "checkpoint-interval", c.CheckpointInterval, "how often the SQLite WAL is checkpointed and truncated")
	fs.StringVar(&c.AlertWebhookURL, "alert-webhook-url", c.AlertWebhookURL, "`URL` that alerts are POSTed to as JSON")
	fs.StringVar(&c.AlertSMTPAddr, "alert-smtp-addr", c.AlertSMTPAddr, "mail server `host:port` for alert mails")
	fs.StringVar(&c.AlertSMTPFrom, "alert-smtp-from", c.AlertSMTPFrom, "sender `address` of alert mails")
	fs.Var(&commaList{list: &c.AlertSMTPTo}, "alert-smtp-to", "recipient `addresses` of alert mails, comma-separated")
	fs.StringVar(&c.AlertSMTPUser, "alert-smtp-user", c.AlertSMTPUser, "`user` to log in to the mail server as")
	fs.StringVar(&c.AlertSMTPPasswordFile, "alert-smtp-password-file", c.AlertSMTPPasswordFile, "`file` holding the mail server password (never give it on the command line)")
	fs.DurationVar(&c.AlertInterval, "alert-interval", c.AlertInterval, "how often the alert checks run")
	fs.DurationVar(&c.AlertRepeat, "alert-repeat", c.AlertRepeat, "least time between two alerts of one kind about one subject")
	fs.Float64Var(&c.AlertFailRatio, "alert-fail-ratio", c.AlertFailRatio, "alert when more than this share of recent final jobs failed")
	fs.DurationVar(&c.AlertFailWindow, "alert-fail-window", c.AlertFailWindow, "the window of --alert-fail-ratio")
	fs.IntVar(&c.AlertFailMin, "alert-fail-min", c.AlertFailMin, "final jobs the window needs before --alert-fail-ratio applies")
	fs.DurationVar(&c.AlertQueueAge, "alert-queue-age", c.AlertQueueAge, "alert when a job has waited longer than this")
	fs.IntVar(&c.AlertWakeupFails, "alert-wakeup-fails", c.AlertWakeupFails, "alert when a server failed to wake this many times in a row")
	fs.DurationVar(&c.AlertNoServerAfter, "alert-no-server-after", c.AlertNoServerAfter, "alert about jobs no connected server takes once they waited this long")
}

// maintServices are the broker's retention and alert services.
type maintServices struct {
	maint  *maint.Maintainer
	alerts *maint.Alerter
}

// newMaint builds the retention and alert services of b.
func (b *Broker) newMaint() error {
	c := b.cfg.Maint
	var notifiers []maint.Notifier
	if c.AlertWebhookURL != "" {
		wh, err := maint.NewWebhook(c.AlertWebhookURL, 10*time.Second)
		if err != nil {
			return fmt.Errorf("alert_webhook_url: %w", err)
		}
		notifiers = append(notifiers, wh)
	}
	if c.AlertSMTPAddr != "" {
		var password string
		if c.AlertSMTPPasswordFile != "" {
			p, err := os.ReadFile(c.AlertSMTPPasswordFile)
			if err != nil {
				return fmt.Errorf("alert_smtp_password_file: %w", err)
			}
			password = strings.TrimRight(string(p), "\r\n")
		}
		sm, err := maint.NewSMTP(c.smtp(password))
		if err != nil {
			return err
		}
		notifiers = append(notifiers, sm)
	}
	b.maintSvc.maint = maint.New(b.db, maint.Config{Retention: c.Retention, Interval: c.RetentionInterval,
		BatchSize: c.RetentionBatch, CheckpointInterval: c.CheckpointInterval}, b.log)
	b.maintSvc.alerts = maint.NewAlerter(b.db, b.disp, notifiers, maint.AlertConfig{Broker: b.cfg.Name,
		Interval: c.AlertInterval, Repeat: c.AlertRepeat, FailRatio: c.AlertFailRatio, FailWindow: c.AlertFailWindow,
		FailMin: c.AlertFailMin, QueueAge: c.AlertQueueAge, WakeupFails: c.AlertWakeupFails,
		NoServerAfter: c.AlertNoServerAfter}, b.log)
	return nil
}

// startMaint starts retention and alerts.
func (b *Broker) startMaint(ctx context.Context) error {
	return b.startServices(ctx, service{"retention", b.maintSvc.maint.Start, b.maintSvc.maint.Stop},
		service{"alerts", b.maintSvc.alerts.Start, b.maintSvc.alerts.Stop})
}

// Maintainer returns the broker's retention service.
func (b *Broker) Maintainer() *maint.Maintainer { return b.maintSvc.maint }

// Alerter returns the broker's alert service.
func (b *Broker) Alerter() *maint.Alerter { return b.maintSvc.alerts }
