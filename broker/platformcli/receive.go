package platformcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gradebroker/gradebroker/certs"
	"github.com/gradebroker/gradebroker/platformclient"
)

// shutdownTimeout bounds how long receive waits for callbacks in flight
// when it stops.
const shutdownTimeout = 5 * time.Second

func receiveFlags(fs *flag.FlagSet) runFunc {
	listen := fs.String("listen", "127.0.0.1:9999", "listen on `HOST:PORT` (port 0 picks a free one)")
	once := fs.Bool("once", false, "exit after the first callback")
	certFile := fs.String("tls-cert", "", "serve HTTPS with this certificate `FILE` (PEM, with its chain)")
	keyFile := fs.String("tls-key", "", "the private key `FILE` of --tls-cert")
	return func(ctx context.Context, r *runner, _ []string) error {
		return r.receive(ctx, *listen, *once, *certFile, *keyFile)
	}
}

// lockedWriter serialises writes from concurrent callbacks, so that lines
// never interleave.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// recorder remembers the status and the start of the body of a response,
// to log why a callback was refused.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if n := 512 - r.body.Len(); n > 0 {
		r.body.Write(p[:min(n, len(p))])
	}
	return r.ResponseWriter.Write(p)
}

// receive serves callbacks on addr until ctx ends, or until the first
// callback with once.
func (r *runner) receive(ctx context.Context, addr string, once bool, certFile, keyFile string) error {
	if (certFile == "") != (keyFile == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	reader, err := r.reader()
	if err != nil {
		return err
	}
	stdout, stderr := &lockedWriter{w: r.stdout}, &lockedWriter{w: r.stderr}
	got := make(chan struct{})
	var gotOnce sync.Once
	handler := reader.Handler(func(_ context.Context, cb platformclient.Callback) error {
		var line bytes.Buffer
		if err := json.Compact(&line, cb.Payload); err != nil {
			return fmt.Errorf("compacting the payload: %w", err)
		}
		line.WriteByte('\n')
		if _, err := stdout.Write(line.Bytes()); err != nil {
			return fmt.Errorf("printing the callback: %w", err)
		}
		fmt.Fprintf(stderr, "callback: job %d %s, delivery %d, %d attempt(s)\n", cb.JobID, cb.Status, cb.DeliveryID, cb.Attempts)
		if once {
			gotOnce.Do(func() { close(got) })
		}
		return nil
	})
	logged := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &recorder{ResponseWriter: w}
		handler.ServeHTTP(rec, req)
		if rec.status != http.StatusOK {
			fmt.Fprintf(stderr, "refused %s %s from %s: %d %s\n", req.Method, req.URL.Path, req.RemoteAddr, rec.status, strings.TrimSpace(rec.body.String()))
		}
	})

	srv := &http.Server{
		Handler:           logged,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		ErrorLog:          log.New(stderr, "receive: ", 0),
	}
	if certFile != "" {
		if srv.TLSConfig, err = certs.CallbackServerTLSConfig(certFile, keyFile); err != nil {
			return fmt.Errorf("--tls-cert, --tls-key: %w", err)
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--listen: %w", err)
	}
	served := make(chan error, 1)
	go func() {
		if srv.TLSConfig != nil {
			served <- srv.ServeTLS(ln, "", "")
		} else {
			served <- srv.Serve(ln)
		}
	}()
	fmt.Fprintf(stderr, "listening on %s\n", ln.Addr())

	var serveErr error
	select {
	case <-ctx.Done():
	case <-got:
	case serveErr = <-served:
	}
	// Let the callback in flight get its answer, so the broker does not
	// send it again.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("serving callbacks: %w", serveErr)
	}
	return nil
}
