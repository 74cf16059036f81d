package platform

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// The payload types below decode the JSON inside a platform's JWS. They
// mirror the *Payload messages of proto/gradebroker/v1/platform.proto, which
// document them; a test keeps the two in step. They are decoded with
// encoding/json rather than protojson because platforms written in PHP or
// JavaScript send numbers as strings and tags as comma-separated strings,
// and because jobdata must reach the grader byte for byte (protojson's Value
// would turn large integers into floats).

// integerType is the type flexInt's decoding errors name.
var integerType = reflect.TypeFor[int64]()

// flexInt is an integer sent as a JSON number or a numeric string.
type flexInt struct {
	v   int64
	set bool
}

func (f *flexInt) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	s := string(b)
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		s = strings.TrimSpace(s)
		if s == "" {
			return nil
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		// Accept 5.0 from languages without integers, but not 5.5.
		fv, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || fv != float64(int64(fv)) {
			// encoding/json adds the member's name to this kind of error.
			return &json.UnmarshalTypeError{Value: strconv.Quote(s), Type: integerType}
		}
		v = int64(fv)
	}
	f.v, f.set = v, true
	return nil
}

// flexTags is a list of tags sent as an array or a comma-separated string.
type flexTags []string

func (f *flexTags) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		for _, t := range strings.Split(s, ",") {
			if t = strings.TrimSpace(t); t != "" {
				*f = append(*f, t)
			}
		}
		return nil
	}
	var list []string
	if err := json.Unmarshal(b, &list); err != nil {
		return errors.New("tags must be an array of strings or a comma-separated string")
	}
	*f = list
	return nil
}

// jobSpec is one job of sendjob or sendjobs.
type jobSpec struct {
	Jobdata        json.RawMessage `json:"jobdata"`
	Jobname        string          `json:"jobname"`
	Priority       flexInt         `json:"priority"`
	Tags           flexTags        `json:"tags"`
	IdempotencyKey string          `json:"idempotency_key"`
	Jobusertaskid  string          `json:"jobusertaskid"`
	TimeoutSec     flexInt         `json:"timeout_sec"`
}

// sendJobsPayload is the payload of sendjobs.
type sendJobsPayload struct {
	Jobs []jobSpec `json:"jobs"`
}

// solutionFile is an uploaded solution.
type solutionFile struct {
	Name          string `json:"name"`
	ContentBase64 string `json:"content_base64"`
}

// sendSolutionPayload is the payload of sendsolution.
type sendSolutionPayload struct {
	Jobname        string        `json:"jobname"`
	Priority       flexInt       `json:"priority"`
	Tags           flexTags      `json:"tags"`
	Taskpath       string        `json:"taskpath"`
	Memlimit       flexInt       `json:"memlimit"`
	Timelimit      flexInt       `json:"timelimit"`
	Lang           string        `json:"lang"`
	Solcontent     *string       `json:"solcontent"`
	Solpath        *string       `json:"solpath"`
	Solfile        *solutionFile `json:"solfile"`
	IdempotencyKey string        `json:"idempotency_key"`
	Jobusertaskid  string        `json:"jobusertaskid"`
	TimeoutSec     flexInt       `json:"timeout_sec"`
}

// jobRef is the payload of getjob and canceljob.
type jobRef struct {
	Jobid       flexInt `json:"jobid"`
	WaitSeconds flexInt `json:"wait_seconds"`
}

// decodePayload decodes a verified payload into v. Unknown members are
// allowed: the claims share the object, and platforms add their own.
func decodePayload(payload []byte, v any) error {
	if err := json.Unmarshal(payload, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			if te.Type == integerType {
				return fmt.Errorf("payload member %q: %s is not an integer", te.Field, te.Value)
			}
			return fmt.Errorf("payload member %q: expected %s", te.Field, te.Type)
		}
		return fmt.Errorf("payload: %w", err)
	}
	return nil
}

// normalizeJobdata returns the job's data as compact-as-sent JSON: an object
// or array is kept byte for byte; a string must itself hold JSON, which is
// used instead.
func normalizeJobdata(raw json.RawMessage) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, errors.New("jobdata is required: a JSON object, or a string holding JSON")
	}
	switch raw[0] {
	case '{', '[':
		return raw, nil
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("jobdata: %w", err)
		}
		inner := bytes.TrimSpace([]byte(s))
		if !json.Valid(inner) {
			return nil, errors.New("jobdata is a string but does not hold valid JSON")
		}
		return inner, nil
	}
	return nil, errors.New("jobdata must be a JSON object, or a string holding JSON")
}

// solutionJobdata builds the taskgrader-style jobdata of a sendsolution
// request. The README ("sendsolution") documents the exact shape:
//
//	{"taskPath": TASKPATH,
//	 "extraParams": {"solutionFilename": NAME, "solutionContent": SOURCE | "solutionPath": PATH,
//	                 "solutionLanguage": LANG,
//	                 "defaultSolutionCompParams": PARAMS, "defaultSolutionExecParams": PARAMS},
//	 "solutions": "@defaultEvaluationSolutions", "executions": "@defaultEvaluationExecutions"}
func solutionJobdata(p sendSolutionPayload) ([]byte, error) {
	if p.Taskpath == "" {
		return nil, errors.New("taskpath is required")
	}
	if p.Lang == "" {
		return nil, errors.New("lang is required (for example \"python3\")")
	}
	if p.Memlimit.set && p.Memlimit.v <= 0 || p.Timelimit.set && p.Timelimit.v <= 0 {
		return nil, errors.New("memlimit (KiB) and timelimit (ms) must be positive")
	}
	extra := map[string]any{"solutionLanguage": p.Lang}
	given := 0
	if p.Solcontent != nil {
		given++
		extra["solutionFilename"] = "solution"
		extra["solutionContent"] = *p.Solcontent
	}
	if p.Solpath != nil {
		given++
		extra["solutionFilename"] = "solution"
		extra["solutionPath"] = *p.Solpath
	}
	if p.Solfile != nil {
		given++
		content, err := base64.StdEncoding.DecodeString(p.Solfile.ContentBase64)
		if err != nil {
			return nil, fmt.Errorf("solfile.content_base64 is not standard base64: %w", err)
		}
		name := p.Solfile.Name
		if name == "" {
			name = "solution"
		}
		extra["solutionFilename"] = name
		extra["solutionContent"] = string(content)
	}
	if given != 1 {
		return nil, fmt.Errorf("exactly one of solcontent, solpath and solfile is required; got %d", given)
	}
	switch {
	case p.Memlimit.set && p.Timelimit.set:
		params := taskgraderParams(p.Timelimit.v, p.Memlimit.v)
		extra["defaultSolutionCompParams"] = params
		extra["defaultSolutionExecParams"] = params
	case p.Memlimit.set || p.Timelimit.set:
		// taskgrader takes the solution's parameters as a whole: half of
		// them would leave it without the other half.
		return nil, errors.New("memlimit and timelimit go together: send both, or neither for the task's defaults")
	}
	return json.Marshal(map[string]any{
		"taskPath":    p.Taskpath,
		"extraParams": extra,
		"solutions":   "@defaultEvaluationSolutions",
		"executions":  "@defaultEvaluationExecutions",
	})
}

// taskgraderParams are a solution's compilation and execution parameters
// for taskgrader, as graderqueue's api.php set them: they replace the
// task's defaults as a whole, so every key taskgrader reads is there.
// The variables the solutions and executions refer to
// (@defaultEvaluationSolutions and @defaultEvaluationExecutions) are the
// ones taskgrader's genJson writes into a task's defaultParams.json.
func taskgraderParams(timeLimitMs, memoryLimitKb int64) map[string]any {
	return map[string]any{
		"timeLimitMs":      timeLimitMs,
		"memoryLimitKb":    memoryLimitKb,
		"useCache":         true,
		"stdoutTruncateKb": -1,
		"stderrTruncateKb": -1,
		"getFiles":         []string{},
	}
}
