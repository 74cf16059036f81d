package brokerd

import (
	"flag"
	"fmt"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/delivery"
	"github.com/gradebroker/gradebroker/broker/xqueue"
)

// XQueueConfig is the part of Config for the XQueue interface, which is
// served under /xqueue/ on http_addr. Its keys sit at the top level of the
// YAML file like every other.
type XQueueConfig struct {
	// XQueueMaxFilesMiB bounds the files of one XQueue submission
	// together, in MiB.
	XQueueMaxFilesMiB int `yaml:"xqueue_max_files_mib"`
}

// DefaultXQueueConfig returns the XQueue interface's defaults.
func DefaultXQueueConfig() XQueueConfig { return XQueueConfig{XQueueMaxFilesMiB: 8} }

// Validate names the first bad field.
func (c XQueueConfig) Validate() error {
	if c.XQueueMaxFilesMiB < 0 || c.XQueueMaxFilesMiB > 1024 {
		return fmt.Errorf("xqueue_max_files_mib: %d is not between 0 and 1024", c.XQueueMaxFilesMiB)
	}
	return nil
}

func registerXQueueFlags(fs *flag.FlagSet, c *XQueueConfig) {
	fs.IntVar(&c.XQueueMaxFilesMiB, "xqueue-max-files-mib", c.XQueueMaxFilesMiB,
		"the most `MiB` of files one XQueue submission may carry (0: none)")
}

// newXQueue makes the XQueue interface, and gives the delivery worker
// XQueue's form of callback.
func (b *Broker) newXQueue(dcfg *delivery.Config) {
	maxFiles := int64(b.cfg.XQueue.XQueueMaxFilesMiB) << 20
	if maxFiles == 0 {
		maxFiles = -1 // no files at all, rather than the default
	}
	b.xq = xqueue.New(xqueue.Config{MaxFiles: maxFiles}, b.db, b.disp, b.log)
	if dcfg.Protocols == nil {
		dcfg.Protocols = map[broker.Protocol]delivery.Protocol{}
	}
	dcfg.Protocols[broker.ProtocolXQueue] = delivery.XQueueProtocol(b.db)
}

// XQueue returns the XQueue interface.
func (b *Broker) XQueue() *xqueue.Service { return b.xq }
