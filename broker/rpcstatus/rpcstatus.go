// Package rpcstatus is the one table that maps gradebroker's domain errors
// to gRPC status codes. Every gRPC service of the broker returns its errors
// through Error, so that a given failure has the same code everywhere and
// grpc-gateway turns it into the same HTTP status.
package rpcstatus

import (
	"context"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gradebroker/gradebroker/broker"
)

// table maps each domain sentinel to its code. Order matters only for an
// error that wraps two sentinels; the first match wins.
var table = []struct {
	err  error
	code codes.Code
}{
	{broker.ErrNotFound, codes.NotFound},
	{broker.ErrConflict, codes.AlreadyExists},
	{broker.ErrInvalid, codes.InvalidArgument},
	{broker.ErrInUse, codes.FailedPrecondition},
	{broker.ErrFailedPrecondition, codes.FailedPrecondition},
	{broker.ErrUnauthenticated, codes.Unauthenticated},
	{broker.ErrPermissionDenied, codes.PermissionDenied},
	{broker.ErrUnavailable, codes.Unavailable},
	{broker.ErrAborted, codes.Aborted},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// internalMessage is all a caller learns of an unexpected error: the details
// (SQL, file paths, driver messages) stay in the log.
const internalMessage = "internal error"

// Code returns the gRPC code Error would give err, without logging. It
// returns codes.OK for nil and codes.Internal for an unmapped error.
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if st, ok := asStatus(err); ok {
		return st.Code()
	}
	for _, row := range table {
		if errors.Is(err, row.err) {
			return row.code
		}
	}
	return codes.Internal
}

// Error turns err into a gRPC status error. A domain error keeps its message,
// which is written for the user; an error that already carries a gRPC status
// passes through unchanged; anything else is logged in full on log, with the
// gRPC method taken from ctx when there is one, and returned as a bare
// codes.Internal "internal error". Error returns nil for nil.
func Error(ctx context.Context, log *slog.Logger, err error) error {
	if err == nil {
		return nil
	}
	if st, ok := asStatus(err); ok {
		return st.Err()
	}
	for _, row := range table {
		if errors.Is(err, row.err) {
			return status.Error(row.code, err.Error())
		}
	}
	if log == nil {
		log = slog.Default()
	}
	attrs := []any{slog.String("error", err.Error())}
	if method, ok := grpc.Method(ctx); ok {
		attrs = append(attrs, slog.String("method", method))
	}
	log.ErrorContext(ctx, "internal error", attrs...)
	return status.Error(codes.Internal, internalMessage)
}

// asStatus finds a gRPC status in err's chain. status.FromError alone would
// also report a status for any error (as Unknown), which must not pass
// through: an unknown error is internal and is logged.
func asStatus(err error) (*status.Status, bool) {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return nil, false
	}
	st := se.GRPCStatus()
	if st == nil || st.Code() == codes.OK {
		return nil, false
	}
	return st, true
}
