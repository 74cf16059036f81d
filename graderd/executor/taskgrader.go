package executor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// Taskgrader makes an Exec run France-ioi's taskgrader the way
// graderqueue's graderserver (graderserver/server.py) runs it, so that a
// grading server moving from graderserver to graderd keeps its taskgrader,
// its tasks and what its platforms receive.
//
// The grader's standard input is then the job's bare jobdata, as
// graderserver sends it, not the exec convention's document: a JSON object
// with, added or replaced,
//
//   - rootPath: RootPath (graderserver's CFG_GRADERQUEUE_ROOT);
//   - taskPath: "zip:ID" becomes ZipRoot/ID/ (CFG_ZIP_TARGET), any other
//     has "$ROOT_PATH" replaced by RootPath, as graderserver rewrites it;
//   - restrictToPaths: the platform's registered restrict_paths if it has
//     any (graderqueue's api.php put them there, over the jobdata's own),
//     else the jobdata's own list, each with $VARIABLES of Vars substituted
//     (Python's Template.safe_substitute, CFG_GRADERQUEUE_VARS), followed by
//     RestrictPaths (CFG_SERVER_RESTRICT); left out when all are empty.
//
// Every other member is passed on as the platform sent it.
//
// taskgrader's output becomes the result graderserver sends to
// sendresults.php, which graderqueue stored and showed in getjob:
//
//	{"errorcode": 0, "errormsg": "Taskgrader executed successfully.\n", "jobdata": <taskgrader's JSON>}
//
// and for a fatal error (exit status 1, or exit 0 with output that is not
// JSON or is empty: null, false, 0, "", {} or [], which graderserver's
// Python test counts as no result) the job is FATAL with
//
//	{"errorcode": 1, "errormsg": "Fatal taskgrader error.\nstdout:\n...\nstderr:\n..."}
//
// each stream cut to its last maxEnvelopeStream bytes. Exit status 2 and
// others (3 is taskgrader's unsupported language) are TEMPORARY, as
// graderserver's errorcode max(1, status) >= 2 asked graderqueue to give the
// job to another server. Limits, time-outs and cancels are graderd's own,
// as for every exec run; a run a limit ended is FATAL with the envelope too.
//
// Task repositories are not updated: graderserver brought a task's svn
// checkout to the job's taskrevision, or downloaded a "zip:" task, before
// each run; graderd does neither (the README's "Moving from graderqueue"
// says how to keep tasks current).
type Taskgrader struct {
	// RootPath is rootPath in taskgrader's input and what "$ROOT_PATH"
	// in taskPath stands for.
	RootPath string
	// ZipRoot is where "zip:ID" task paths lie, as ZipRoot/ID/.
	ZipRoot string
	// Vars are substituted for $NAME and ${NAME} in restrictToPaths.
	Vars map[string]string
	// RestrictPaths are the server's own paths, appended to every job's
	// restrictToPaths.
	RestrictPaths []string
}

// maxEnvelopeStream bounds each of stdout and stderr in a fatal result's
// errormsg: the whole of stderr is the job's log already.
const maxEnvelopeStream = 64 << 10

// input builds taskgrader's standard input for job.
func (t *Taskgrader) input(job Job) ([]byte, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(job.JobData, &doc); err != nil || doc == nil {
		return nil, errors.New("taskgrader mode: jobdata must be a JSON object (taskgrader's input)")
	}
	set := func(name string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		doc[name] = b
		return nil
	}
	if err := set("rootPath", t.RootPath); err != nil {
		return nil, err
	}
	var taskPath string
	if raw, ok := doc["taskPath"]; ok && json.Unmarshal(raw, &taskPath) == nil {
		// A missing or odd taskPath is passed on: taskgrader says what
		// is wrong with it.
		p, err := t.taskPath(taskPath)
		if err != nil {
			return nil, err
		}
		if err := set("taskPath", p); err != nil {
			return nil, err
		}
	}
	restrict, err := t.restrictToPaths(job, doc["restrictToPaths"])
	if err != nil {
		return nil, err
	}
	if restrict != nil {
		if err := set("restrictToPaths", restrict); err != nil {
			return nil, err
		}
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("taskgrader mode: encoding taskgrader's input: %w", err)
	}
	return append(out, '\n'), nil
}

// taskPath rewrites a job's taskPath as graderserver's getTargetPath does.
func (t *Taskgrader) taskPath(p string) (string, error) {
	if id, ok := strings.CutPrefix(p, "zip:"); ok {
		// graderserver joined the id as it came; one path element only,
		// so that a job cannot point outside ZipRoot.
		if id == "" || id == "." || id == ".." || strings.ContainsRune(id, '/') {
			return "", fmt.Errorf("taskgrader mode: taskPath %q: a zip task's id must be one file name", p)
		}
		return filepath.Join(t.ZipRoot, id) + "/", nil
	}
	return strings.ReplaceAll(p, "$ROOT_PATH", t.RootPath), nil
}

// restrictToPaths merges the paths a job is restricted to as graderqueue
// and graderserver did; nil means none at all.
func (t *Taskgrader) restrictToPaths(job Job, own json.RawMessage) ([]string, error) {
	var paths []string
	switch {
	case len(job.RestrictPaths) > 0:
		paths = append(paths, job.RestrictPaths...)
	case len(own) > 0 && !bytes.Equal(bytes.TrimSpace(own), []byte("null")):
		var one string
		if json.Unmarshal(own, &one) == nil {
			paths = []string{one}
		} else if err := json.Unmarshal(own, &paths); err != nil {
			return nil, errors.New("taskgrader mode: jobdata's restrictToPaths must be a list of paths")
		}
	}
	for i, p := range paths {
		paths[i] = safeSubstitute(p, t.Vars)
	}
	paths = append(paths, t.RestrictPaths...)
	if len(paths) == 0 {
		return nil, nil
	}
	return paths, nil
}

// templateVar is Python's string.Template pattern: $$, $name, ${name}, with
// names of letters, digits and _ not starting with a digit (ASCII; Python's
// default flag makes it case-insensitive, which these classes already are).
var templateVar = regexp.MustCompile(`\$(?:(\$)|([_a-zA-Z][_a-zA-Z0-9]*)|\{([_a-zA-Z][_a-zA-Z0-9]*)\})`)

// safeSubstitute is Python's Template(s).safe_substitute(vars): a known
// variable is replaced, $$ becomes $, anything else is left as it is.
func safeSubstitute(s string, vars map[string]string) string {
	return templateVar.ReplaceAllStringFunc(s, func(m string) string {
		sub := templateVar.FindStringSubmatch(m)
		switch {
		case sub[1] != "":
			return "$"
		case sub[2] != "":
			if v, ok := vars[sub[2]]; ok {
				return v
			}
		case sub[3] != "":
			if v, ok := vars[sub[3]]; ok {
				return v
			}
		}
		return m
	})
}

// shape turns a run's Result into graderserver's result; out is the
// grader's stdout as kept, stderr its log.
func (t *Taskgrader) shape(res Result, out []byte, stderr string) Result {
	switch res.Outcome {
	case gradebrokerv1.Outcome_OUTCOME_OK:
		if !pythonEmpty(res.Result) {
			res.Result = envelope(0, "Taskgrader executed successfully.\n", res.Result)
			return res
		}
		res.Outcome = gradebrokerv1.Outcome_OUTCOME_FATAL
		res.Error = "taskgrader exited with status 0 but its output is empty (" + string(res.Result) + ")"
	case gradebrokerv1.Outcome_OUTCOME_FATAL:
	default:
		// Not final: nothing reaches the platform.
		return res
	}
	msg := "Fatal taskgrader error.\nstdout:\n" + tail(string(out)) + "\nstderr:\n" + tail(stderr)
	res.Result = envelope(1, msg, nil)
	return res
}

// pythonEmpty reports whether doc, JSON, is false to Python's truth test
// once decoded, which graderserver applies to taskgrader's output.
func pythonEmpty(doc []byte) bool {
	doc = bytes.TrimSpace(doc)
	if len(doc) == 0 {
		return true
	}
	switch doc[0] {
	case '{':
		var m map[string]json.RawMessage
		return json.Unmarshal(doc, &m) != nil || len(m) == 0
	case '[':
		var l []json.RawMessage
		return json.Unmarshal(doc, &l) != nil || len(l) == 0
	}
	var v any
	if json.Unmarshal(doc, &v) != nil {
		return true
	}
	switch v := v.(type) {
	case nil:
		return true
	case bool:
		return !v
	case string:
		return v == ""
	case float64:
		return v == 0
	}
	return false
}

// envelope is graderserver's resultdata: errorcode, errormsg and, when
// taskgrader produced it, jobdata spliced in byte for byte.
func envelope(code int, msg string, jobdata []byte) []byte {
	head, _ := json.Marshal(struct {
		Code int    `json:"errorcode"`
		Msg  string `json:"errormsg"`
	}{code, msg})
	if jobdata == nil {
		return head
	}
	doc := append(head[:len(head)-1], `,"jobdata":`...)
	doc = append(doc, bytes.TrimSpace(jobdata)...)
	return append(doc, '}')
}

// tail keeps the last maxEnvelopeStream bytes of s, as valid UTF-8.
func tail(s string) string {
	if len(s) <= maxEnvelopeStream {
		return strings.ToValidUTF8(s, "")
	}
	return "[...]" + strings.ToValidUTF8(s[len(s)-maxEnvelopeStream:], "")
}
