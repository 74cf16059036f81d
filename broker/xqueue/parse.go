package xqueue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/url"
	"strconv"
	"strings"
)

// This file reads what clients send: the forms of submit/ and put_result/
// and the JSON headers inside them. Each parser has a fuzz target.

// Limits bound what one request may carry.
type Limits struct {
	// Field bounds one form field (xqueue_header, xqueue_body), in bytes.
	Field int64
	// Files bounds the files of one submission together, in bytes.
	Files int64
	// Parts bounds the parts of a multipart form.
	Parts int
}

// errTooLarge is a form past Limits.
var errTooLarge = errors.New("too large")

// form is a submit/ or put_result/ form: its fields (the last value of
// each, as Django's request.POST[name] gives) and, multipart, its files
// (by field name, as XQueue names them, in the order they came; a name
// sent twice keeps its last file).
type form struct {
	fields map[string]string
	files  []file
}

type file struct {
	name string
	data []byte
}

// parseForm reads a form of the given Content-Type: multipart/form-data,
// or else application/x-www-form-urlencoded (the LMS sends that when there
// are no files; a missing Content-Type is read the same way). An error
// wrapping errTooLarge names the limit passed; any other says what is
// malformed.
func parseForm(contentType string, body io.Reader, lim Limits) (form, error) {
	f := form{fields: make(map[string]string)}
	mediaType, params, err := mime.ParseMediaType(contentType)
	if err != nil || mediaType != "multipart/form-data" {
		// The whole body is fields: at most two of them count.
		raw, err := io.ReadAll(io.LimitReader(body, 2*lim.Field+1024+1))
		if err != nil {
			return f, fmt.Errorf("reading the form: %w", err)
		}
		if int64(len(raw)) > 2*lim.Field+1024 {
			return f, fmt.Errorf("%w: the form is longer than %d bytes", errTooLarge, 2*lim.Field+1024)
		}
		vals, err := url.ParseQuery(string(raw))
		if err != nil {
			return f, fmt.Errorf("the form is not URL-encoded: %w", err)
		}
		for k, v := range vals {
			if int64(len(v[len(v)-1])) > lim.Field {
				return f, fmt.Errorf("%w: field %s is longer than %d bytes", errTooLarge, k, lim.Field)
			}
			f.fields[k] = v[len(v)-1]
		}
		return f, nil
	}
	boundary := params["boundary"]
	if boundary == "" {
		return f, errors.New("multipart form without a boundary")
	}
	mr := multipart.NewReader(body, boundary)
	var filesSize int64
	for n := 0; ; n++ {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return f, nil
		}
		if err != nil {
			return f, fmt.Errorf("reading the multipart form: %w", err)
		}
		if n >= lim.Parts {
			return f, fmt.Errorf("%w: more than %d parts", errTooLarge, lim.Parts)
		}
		name := p.FormName()
		if name == "" {
			p.Close()
			continue
		}
		if len(name) > maxNameLen {
			return f, fmt.Errorf("a part's name is longer than %d bytes", maxNameLen)
		}
		if p.FileName() == "" {
			v, err := readLimited(p, lim.Field)
			if err != nil {
				return f, fmt.Errorf("field %s: %w", name, err)
			}
			f.fields[name] = string(v)
			continue
		}
		data, err := readLimited(p, lim.Files-filesSize)
		if err != nil {
			return f, fmt.Errorf("file %s: %w (the files of one submission may take %d bytes in all)", name, err, lim.Files)
		}
		filesSize += int64(len(data))
		for i, old := range f.files {
			if old.name == name {
				f.files = append(f.files[:i], f.files[i+1:]...)
				filesSize -= int64(len(old.data))
				break
			}
		}
		f.files = append(f.files, file{name: name, data: data})
	}
}

// maxNameLen bounds the name of a form's part (a file's name).
const maxNameLen = 255

// readLimited reads r to its end, failing with errTooLarge past max bytes.
func readLimited(r io.Reader, max int64) ([]byte, error) {
	if max < 0 {
		max = 0
	}
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, fmt.Errorf("%w: longer than %d bytes", errTooLarge, max)
	}
	return buf.Bytes(), nil
}

// lmsHeader is what the broker reads of a submission's xqueue_header (the
// LMS's make_xheader); the header itself is kept as it came, to be posted
// back with the result.
type lmsHeader struct {
	CallbackURL string
	Queue       string
}

// errBadFormat is a request XQueue answers "... has invalid format".
var errBadFormat = errors.New("invalid format")

// parseLMSHeader reads an xqueue_header from submit/: a JSON object with
// lms_callback_url, lms_key and queue_name, as XQueue's _is_valid_request
// requires. lms_key may be anything: only the LMS reads it back.
func parseLMSHeader(raw string) (lmsHeader, error) {
	// A map, so that a key present with null counts as present, as in
	// Python's "in".
	var h map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &h); err != nil || h == nil {
		return lmsHeader{}, fmt.Errorf("%w: xqueue_header is not a JSON object", errBadFormat)
	}
	callback, hasCallback := h["lms_callback_url"]
	queue, hasQueue := h["queue_name"]
	if _, hasKey := h["lms_key"]; !hasCallback || !hasKey || !hasQueue {
		return lmsHeader{}, fmt.Errorf("%w: xqueue_header needs lms_callback_url, lms_key and queue_name", errBadFormat)
	}
	var out lmsHeader
	if err := json.Unmarshal(callback, &out.CallbackURL); err != nil || out.CallbackURL == "" {
		return lmsHeader{}, fmt.Errorf("%w: lms_callback_url must be a URL string", errBadFormat)
	}
	// XQueue takes str() of the queue name; a number is the one other
	// thing that makes sense.
	if err := json.Unmarshal(queue, &out.Queue); err != nil {
		var n json.Number
		if json.Unmarshal(queue, &n) != nil {
			return lmsHeader{}, fmt.Errorf("%w: queue_name must be a string", errBadFormat)
		}
		out.Queue = n.String()
	}
	return out, nil
}

// graderHeader is the xqueue_header of a put_result/: the submission and
// the key of its pull.
type graderHeader struct {
	SubmissionID int64
	Key          string
}

// parseGraderHeader reads a put_result/ xqueue_header: a JSON object with
// submission_id (a number, or a string of one, as Python's int() takes)
// and submission_key (a string), as XQueue's _is_valid_reply requires.
func parseGraderHeader(raw string) (graderHeader, error) {
	var h struct {
		ID  *json.RawMessage `json:"submission_id"`
		Key *string          `json:"submission_key"`
	}
	if err := json.Unmarshal([]byte(raw), &h); err != nil {
		return graderHeader{}, fmt.Errorf("%w: xqueue_header is not a JSON object with a string submission_key: %v", errBadFormat, err)
	}
	if h.ID == nil || h.Key == nil {
		return graderHeader{}, fmt.Errorf("%w: xqueue_header needs submission_id and submission_key", errBadFormat)
	}
	var out graderHeader
	out.Key = *h.Key
	var n json.Number
	var s string
	switch {
	case json.Unmarshal(*h.ID, &n) == nil:
	case json.Unmarshal(*h.ID, &s) == nil:
		n = json.Number(strings.TrimSpace(s))
	default:
		return graderHeader{}, fmt.Errorf("%w: submission_id must be a number", errBadFormat)
	}
	id, err := strconv.ParseInt(n.String(), 10, 64)
	if err != nil {
		// Python's int() of a float truncates it.
		f, ferr := strconv.ParseFloat(n.String(), 64)
		if ferr != nil || math.IsNaN(f) || math.IsInf(f, 0) || f > math.MaxInt64 || f < math.MinInt64 {
			return graderHeader{}, fmt.Errorf("%w: submission_id %q is not a number", errBadFormat, n)
		}
		id = int64(f)
	}
	out.SubmissionID = id
	return out, nil
}
