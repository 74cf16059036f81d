package xqueue

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker/dispatch"
)

// This file makes and checks what the broker hands pulling clients: the
// submission_key of a pull, which is its lease (the fencing token), and
// links to a submission's files, which graders fetch without a session.
// Both carry an HMAC under a key the broker keeps in its database (so that
// they outlive a restart), so that neither can be made up.

// macKeyName names the key in the store's secrets.
const macKeyName = "xqueue-mac"

// macs makes and checks the MACs.
type macs struct{ key []byte }

func (m macs) sum(label string, nums ...int64) []byte {
	h := hmac.New(sha256.New, m.key)
	h.Write([]byte(label))
	var b [8]byte
	for _, n := range nums {
		binary.BigEndian.PutUint64(b[:], uint64(n))
		h.Write(b[:])
	}
	return h.Sum(nil)
}

// keyMACLen is how many bytes of the MAC a submission key carries.
const keyMACLen = 12

// submissionKey is the submission_key of lease ref: "LEASE.MAC".
func (m macs) submissionKey(ref dispatch.LeaseRef) string {
	return strconv.FormatInt(ref.LeaseID, 10) + "." + hex.EncodeToString(m.sum("key", ref.JobID, ref.LeaseID)[:keyMACLen])
}

// errBadKey is a submission_key the broker did not make for the
// submission.
var errBadKey = errors.New("incorrect key")

// leaseOf checks that key is the broker's key of a pull of job jobID and
// returns the lease it names.
func (m macs) leaseOf(jobID int64, key string) (dispatch.LeaseRef, error) {
	lease, _, ok := strings.Cut(key, ".")
	if !ok {
		return dispatch.LeaseRef{}, errBadKey
	}
	id, err := strconv.ParseInt(lease, 10, 64)
	if err != nil || id <= 0 {
		return dispatch.LeaseRef{}, errBadKey
	}
	// The key must be exactly the one the broker makes, not another
	// spelling of it.
	ref := dispatch.LeaseRef{JobID: jobID, LeaseID: id}
	if !hmac.Equal([]byte(key), []byte(m.submissionKey(ref))) {
		return dispatch.LeaseRef{}, errBadKey
	}
	return ref, nil
}

// fileLink is what a file URL names: one attachment, for the lease that
// pulled its job, until the lease's deadline.
type fileLink struct {
	Attachment int64
	Lease      int64
	Expires    time.Time
}

// fileMACLen is how many bytes of the MAC a file link carries.
const fileMACLen = 16

// fileToken encodes l in a URL path segment.
func (m macs) fileToken(l fileLink) string {
	var b [24 + fileMACLen]byte
	binary.BigEndian.PutUint64(b[0:], uint64(l.Attachment))
	binary.BigEndian.PutUint64(b[8:], uint64(l.Lease))
	binary.BigEndian.PutUint64(b[16:], uint64(l.Expires.Unix()))
	copy(b[24:], m.sum("file", l.Attachment, l.Lease, l.Expires.Unix())[:fileMACLen])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// errBadLink is a file link the broker did not make, or that expired.
var errBadLink = errors.New("no such file link, or it expired")

// parseFileToken checks a file token made by fileToken and still valid at
// now.
func (m macs) parseFileToken(tok string, now time.Time) (fileLink, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	// The decoder skips line breaks: only the broker's own spelling passes.
	if err != nil || len(b) != 24+fileMACLen || base64.RawURLEncoding.EncodeToString(b) != tok {
		return fileLink{}, errBadLink
	}
	l := fileLink{
		Attachment: int64(binary.BigEndian.Uint64(b[0:])),
		Lease:      int64(binary.BigEndian.Uint64(b[8:])),
		Expires:    time.Unix(int64(binary.BigEndian.Uint64(b[16:])), 0),
	}
	if !hmac.Equal(b[24:], m.sum("file", l.Attachment, l.Lease, l.Expires.Unix())[:fileMACLen]) || !now.Before(l.Expires) {
		return fileLink{}, errBadLink
	}
	return l, nil
}
