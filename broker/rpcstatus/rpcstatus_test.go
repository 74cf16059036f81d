package rpcstatus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/broker"
	"github.com/gradebroker/gradebroker/broker/rpcstatus"
)

func TestErrorTable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		err      error
		wantCode codes.Code
		wantMsg  string
	}{
		{"not found", fmt.Errorf("%w: job 7", broker.ErrNotFound), codes.NotFound, "not found: job 7"},
		{"conflict", fmt.Errorf("%w: tag %q is already registered", broker.ErrConflict, "py"), codes.AlreadyExists, `already exists: tag "py" is already registered`},
		{"invalid", fmt.Errorf("%w: bad name", broker.ErrInvalid), codes.InvalidArgument, "invalid argument: bad name"},
		{"in use", fmt.Errorf("%w: tag used", broker.ErrInUse), codes.FailedPrecondition, "in use: tag used"},
		{"failed precondition", fmt.Errorf("%w: last operator", broker.ErrFailedPrecondition), codes.FailedPrecondition, "failed precondition: last operator"},
		{"unauthenticated", fmt.Errorf("%w: who", broker.ErrUnauthenticated), codes.Unauthenticated, "unauthenticated: who"},
		{"permission denied", fmt.Errorf("%w: no", broker.ErrPermissionDenied), codes.PermissionDenied, "permission denied: no"},
		{"unavailable", fmt.Errorf("%w: busy", broker.ErrUnavailable), codes.Unavailable, "unavailable: busy"},
		{"aborted", fmt.Errorf("%w: replaced", broker.ErrAborted), codes.Aborted, "aborted: replaced"},
		{"doubly wrapped", fmt.Errorf("add server: %w", fmt.Errorf("%w: x", broker.ErrConflict)), codes.AlreadyExists, "add server: already exists: x"},
		{"canceled", fmt.Errorf("query: %w", context.Canceled), codes.Canceled, "query: context canceled"},
		{"deadline", context.DeadlineExceeded, codes.DeadlineExceeded, "context deadline exceeded"},
		{"status passes through", status.Error(codes.ResourceExhausted, "slow down"), codes.ResourceExhausted, "slow down"},
		{"wrapped status passes through", fmt.Errorf("call: %w", status.Error(codes.Aborted, "retry")), codes.Aborted, "retry"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var logBuf bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logBuf, nil))
			got := rpcstatus.Error(context.Background(), log, tt.err)
			st, ok := status.FromError(got)
			if !ok {
				t.Fatalf("Error(%v) = %v, not a status error", tt.err, got)
			}
			if st.Code() != tt.wantCode || st.Message() != tt.wantMsg {
				t.Errorf("Error(%v) = %v %q, want %v %q", tt.err, st.Code(), st.Message(), tt.wantCode, tt.wantMsg)
			}
			if c := rpcstatus.Code(tt.err); c != tt.wantCode {
				t.Errorf("Code(%v) = %v, want %v", tt.err, c, tt.wantCode)
			}
			if logBuf.Len() != 0 {
				t.Errorf("a mapped error was logged: %s", logBuf.String())
			}
		})
	}
}

func TestErrorNil(t *testing.T) {
	t.Parallel()
	if err := rpcstatus.Error(context.Background(), slog.Default(), nil); err != nil {
		t.Errorf("Error(nil) = %v, want nil", err)
	}
	if c := rpcstatus.Code(nil); c != codes.OK {
		t.Errorf("Code(nil) = %v, want OK", c)
	}
}

// An unmapped error must reach the log in full and the caller as a bare
// "internal error", so that SQL or file paths never leak to a client.
func TestErrorInternalIsLoggedNotLeaked(t *testing.T) {
	t.Parallel()
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	secret := errors.New("sqlite: disk I/O error at /var/lib/gradebroker/gb.db")
	got := rpcstatus.Error(context.Background(), log, fmt.Errorf("list jobs: %w", secret))
	st, _ := status.FromError(got)
	if st.Code() != codes.Internal || st.Message() != "internal error" {
		t.Errorf("got %v %q, want Internal \"internal error\"", st.Code(), st.Message())
	}
	if !strings.Contains(logBuf.String(), "/var/lib/gradebroker/gb.db") || !strings.Contains(logBuf.String(), "list jobs") {
		t.Errorf("log does not hold the full error: %s", logBuf.String())
	}
	// A nil logger falls back to slog.Default rather than panicking.
	if err := rpcstatus.Error(context.Background(), nil, secret); status.Code(err) != codes.Internal {
		t.Errorf("nil logger: got %v, want Internal", err)
	}
}

// fakeStream gives a context a gRPC method name, as a server does.
type fakeStream struct{ grpc.ServerTransportStream }

func (fakeStream) Method() string { return "/gradebroker.v1.AdminService/ListJobs" }

func TestErrorInternalLogsMethod(t *testing.T) {
	t.Parallel()
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logBuf, nil))
	ctx := grpc.NewContextWithServerTransportStream(context.Background(), fakeStream{})
	rpcstatus.Error(ctx, log, errors.New("boom"))
	if !strings.Contains(logBuf.String(), "method=/gradebroker.v1.AdminService/ListJobs") {
		t.Errorf("log lacks the method: %s", logBuf.String())
	}
}
