package wakeup

import (
	"time"

	"github.com/gradebroker/gradebroker/wakeupmsg"
)

// bodyAt is NewBody's input for server at now.
func bodyAt(broker, server string, now time.Time, waiting int) wakeupmsg.Body {
	return wakeupmsg.Body{Server: server, Broker: broker, TS: now.Unix(), Nonce: wakeupmsg.NewNonce(), Waiting: waiting}
}
