package scenarios

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Statuses of a scenario's record.
const (
	// StatusSuccess: the answer had the expected status and body.
	StatusSuccess = "success"
	// StatusFail: the answer's HTTP status was not the expected one.
	StatusFail = "fail"
	// StatusMismatch: the status was right, the body was not.
	StatusMismatch = "mismatch"
	// StatusTimeout: no whole answer came within the scenario's timeout.
	StatusTimeout = "timeout"
	// StatusError: the request could not be made or answered (connection
	// refused or reset, a malformed answer, a service that never became
	// ready).
	StatusError = "error"
)

// MaxShownBody bounds the body a record shows (got.body), in bytes: the
// comparison sees up to the runner's cap, the record a readable part.
const MaxShownBody = 4 << 10

// Response is what the runner got for one request.
type Response struct {
	// Status is the HTTP status; 0 when there was no answer.
	Status int `json:"status,omitempty"`
	// ContentType is the answer's Content-Type header.
	ContentType string `json:"content_type,omitempty"`
	// Body is the answer's body, cut at the runner's cap.
	Body []byte `json:"body,omitempty"`
	// Truncated says the body was longer than the cap.
	Truncated bool `json:"truncated,omitempty"`
	// Error says why there was no answer.
	Error string `json:"error,omitempty"`
	// Timeout says the scenario's timeout passed first.
	Timeout bool `json:"timeout,omitempty"`
	// DurationMS is the time from the request's start to the end of its
	// answer, or to the failure.
	DurationMS int64 `json:"duration_ms"`
}

// Record is the result of one scenario.
type Record struct {
	Name       string   `json:"name"`
	Public     bool     `json:"public"`
	Status     string   `json:"status"`
	Method     string   `json:"method"`
	Path       string   `json:"path"`
	Expected   Expected `json:"expected"`
	Got        Got      `json:"got"`
	Diff       string   `json:"diff,omitempty"`
	Error      string   `json:"error,omitempty"`
	DurationMS int64    `json:"duration_ms"`
	Points     float64  `json:"points"`
}

// Expected is what a scenario expected, as its record shows it.
type Expected struct {
	Status    int             `json:"status"`
	JSON      json.RawMessage `json:"json,omitempty"`
	Ignore    []string        `json:"ignore,omitempty"`
	Unordered bool            `json:"unordered,omitempty"`
	Text      *string         `json:"text,omitempty"`
	Regex     string          `json:"regex,omitempty"`
}

// Got is the answer as a record shows it: the body as text, cut at
// MaxShownBody (an empty body is shown as such, never left out).
type Got struct {
	Status      int    `json:"status,omitempty"`
	ContentType string `json:"content_type,omitempty"`
	Body        string `json:"body"`
	Truncated   bool   `json:"truncated,omitempty"`
}

// Judge compares a response with what its scenario expects.
func Judge(sc Scenario, r Response) Record {
	rec := Record{
		Name: sc.Name, Public: sc.Public, Method: sc.Method, Path: sc.Path,
		Expected: Expected{Status: sc.Expect.Status, JSON: sc.Expect.JSON, Ignore: sc.Expect.Ignore, Unordered: sc.Expect.Unordered,
			Text: sc.Expect.Text, Regex: sc.Expect.Regex},
		DurationMS: r.DurationMS,
		Points:     sc.points(),
	}
	body, cutShort := r.Body, r.Truncated
	if len(body) > MaxShownBody {
		body, cutShort = body[:MaxShownBody], true
	}
	rec.Got = Got{Status: r.Status, ContentType: r.ContentType, Body: strings.ToValidUTF8(string(body), "\uFFFD"), Truncated: cutShort}
	if !utf8.Valid(body) {
		rec.Got.Body = fmt.Sprintf("(%d bytes, not UTF-8 text) %s", len(r.Body), rec.Got.Body)
	}
	switch {
	case r.Timeout:
		rec.Status = StatusTimeout
		rec.Error = r.Error
		return rec
	case r.Status == 0:
		rec.Status = StatusError
		rec.Error = r.Error
		return rec
	case r.Status != sc.Expect.Status:
		rec.Status = StatusFail
		rec.Diff = fmt.Sprintf("status: expected %d, got %d", sc.Expect.Status, r.Status)
		return rec
	}
	var diff []string
	switch e := sc.Expect; {
	case r.Truncated:
		diff = []string{fmt.Sprintf("the body is longer than the %d bytes graderd reads", len(r.Body))}
	case e.JSON != nil:
		diff = CompareJSON(e.JSON, r.Body, e.Ignore, e.Unordered)
	case e.Text != nil:
		diff = CompareText(*e.Text, r.Body)
	case e.Regex != "":
		diff = CompareRegex(e.Regex, r.Body)
	}
	if len(diff) > 0 {
		rec.Status = StatusMismatch
		rec.Diff = strings.Join(diff, "\n")
		return rec
	}
	rec.Status = StatusSuccess
	return rec
}

// Totals count the records by status.
type Totals struct {
	Total    int `json:"total"`
	Success  int `json:"success"`
	Fail     int `json:"fail"`
	Mismatch int `json:"mismatch"`
	Timeout  int `json:"timeout"`
	Error    int `json:"error"`
}

// Result is the result document of a scenarios job.
type Result struct {
	// Image is the student's image as the job named it.
	Image string `json:"image"`
	// Set names the scenario set.
	Set string `json:"scenario_set,omitempty"`
	// PublicOnly says the platform asked for public scenarios only: the
	// private ones were not run and are not mentioned.
	PublicOnly bool `json:"public_only"`
	// Ready says whether the service answered its readiness probe, and
	// ReadyMS after how long.
	Ready   bool  `json:"ready"`
	ReadyMS int64 `json:"ready_ms"`
	// Error says why the scenarios could not all run (a service that
	// never became ready).
	Error     string   `json:"error,omitempty"`
	Scenarios []Record `json:"scenarios"`
	Totals    Totals   `json:"totals"`
	// Points are the points of the successful scenarios, out of
	// MaxPoints; Score is their ratio, from 0 to 1.
	Points    float64 `json:"points"`
	MaxPoints float64 `json:"max_points"`
	Score     float64 `json:"score"`
}

// Tally fills in Totals, Points, MaxPoints and Score from the records.
func (r *Result) Tally() {
	r.Totals = Totals{Total: len(r.Scenarios)}
	r.Points, r.MaxPoints = 0, 0
	for _, rec := range r.Scenarios {
		r.MaxPoints += rec.Points
		switch rec.Status {
		case StatusSuccess:
			r.Totals.Success++
			r.Points += rec.Points
		case StatusFail:
			r.Totals.Fail++
		case StatusMismatch:
			r.Totals.Mismatch++
		case StatusTimeout:
			r.Totals.Timeout++
		default:
			r.Totals.Error++
		}
	}
	r.Score = 0
	if r.MaxPoints > 0 {
		r.Score = math.Round(r.Points/r.MaxPoints*10000) / 10000
	}
}

// NotRun is the record of a scenario that could not run: why says so.
func NotRun(sc Scenario, why string) Record {
	return Judge(sc, Response{Error: why})
}
