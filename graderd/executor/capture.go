package executor

import (
	"fmt"
	"strings"
	"sync"
)

// ResultBuffer keeps a grader's standard output (its result) up to a cap.
// Past the cap it keeps accepting (and dropping) bytes rather than failing
// the write, so that the grader is stopped by its executor's kill and not by
// a SIGPIPE that would look like a crash; Overflow tells the executor to stop
// it. Every executor captures results with it, so that "output size limit"
// means the same everywhere. It is safe for concurrent use.
type ResultBuffer struct {
	max      int64
	overflow chan struct{}

	mu    sync.Mutex
	buf   []byte
	total int64
	once  sync.Once
}

// NewResultBuffer returns a ResultBuffer that keeps max bytes.
func NewResultBuffer(max int64) *ResultBuffer {
	return &ResultBuffer{max: max, overflow: make(chan struct{})}
}

// Write keeps what fits under the cap and drops the rest; it never fails.
func (b *ResultBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total += int64(len(p))
	if room := b.max - int64(len(b.buf)); room > 0 {
		b.buf = append(b.buf, p[:min(room, int64(len(p)))]...)
	}
	if b.total > b.max {
		b.once.Do(func() { close(b.overflow) })
	}
	return len(p), nil
}

// Overflow is closed once more than the cap was written.
func (b *ResultBuffer) Overflow() <-chan struct{} { return b.overflow }

// Bytes returns a copy of what was kept and whether the grader wrote more
// than the cap.
func (b *ResultBuffer) Bytes() ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf...), b.total > b.max
}

// LogBuffer keeps a grader's standard error (the job's log) within max
// bytes. When the log is longer it keeps the first and the last half and
// marks the cut: the start says what the grader was doing, the end usually
// holds the traceback. Every executor keeps logs with it. It is safe for
// concurrent use.
type LogBuffer struct {
	max int64

	mu    sync.Mutex
	head  []byte
	tail  []byte // everything after head, trimmed now and then to its last max-max/2 bytes
	total int64
}

// NewLogBuffer returns a LogBuffer that keeps max bytes.
func NewLogBuffer(max int64) *LogBuffer {
	return &LogBuffer{max: max}
}

func (b *LogBuffer) headMax() int64 { return b.max / 2 }
func (b *LogBuffer) tailMax() int64 { return b.max - b.max/2 }

// Write keeps p as the cut allows; it never fails.
func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := len(p)
	b.total += int64(n)
	if room := b.headMax() - int64(len(b.head)); room > 0 {
		k := min(room, int64(len(p)))
		b.head = append(b.head, p[:k]...)
		p = p[k:]
	}
	b.tail = append(b.tail, p...)
	// Trim only once the tail is twice its size so a chatty grader costs
	// amortised constant work per byte.
	if tm := b.tailMax(); int64(len(b.tail)) > 2*tm && tm >= 0 {
		b.tail = append([]byte(nil), b.tail[int64(len(b.tail))-tm:]...)
	}
	return n, nil
}

// String returns the kept log as valid UTF-8, with a marker where bytes
// were cut.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var s string
	if b.total <= b.max {
		s = string(b.head) + string(b.tail)
	} else {
		t := b.tail
		if tm := b.tailMax(); int64(len(t)) > tm {
			t = t[int64(len(t))-tm:]
		}
		cut := b.total - int64(len(b.head)) - int64(len(t))
		s = string(b.head) + fmt.Sprintf("\n[... %d bytes of stderr cut ...]\n", cut) + string(t)
	}
	// Graders may print binary, and a cut may split a character; protobuf
	// strings must be valid UTF-8 or the Result cannot be sent.
	return strings.ToValidUTF8(s, "\uFFFD")
}
