// Package broker holds gradebroker's domain: the words of DESIGN.md as Go
// types, and the errors every layer shares. Storage, dispatch and the APIs
// live in sub-packages; this one imports none of them.
package broker

import "errors"

// ErrNotFound means the named thing does not exist (or is not visible to the
// caller: another platform's job is "not found").
var ErrNotFound = errors.New("not found")

// ErrConflict means the thing already exists, or would collide with one that
// does (a second server with the same name or certificate).
var ErrConflict = errors.New("already exists")

// ErrInvalid means the input is malformed or names something that does not
// exist; the wrapped message says which field.
var ErrInvalid = errors.New("invalid argument")

// ErrInUse means the thing cannot be removed or changed because something
// else still depends on it (a tag a server type uses, a type a server has).
var ErrInUse = errors.New("in use")

// ErrFailedPrecondition means the request is well formed but the system is not
// in a state that allows it (cancelling a finished job, a stale lease).
var ErrFailedPrecondition = errors.New("failed precondition")

// ErrUnauthenticated means the caller could not be identified.
var ErrUnauthenticated = errors.New("unauthenticated")

// ErrPermissionDenied means the caller is known but may not do this.
var ErrPermissionDenied = errors.New("permission denied")

// ErrUnavailable means the broker cannot do it now but may later (shutting
// down, the database is busy past its timeout).
var ErrUnavailable = errors.New("unavailable")

// ErrAborted means the operation was cut short by a newer one that took its
// place (a server's connection replaced by its next one); the caller may
// try again.
var ErrAborted = errors.New("aborted")
