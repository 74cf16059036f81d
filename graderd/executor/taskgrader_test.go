package executor

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// taskgraderReport is what testdata/taskgrader.py prints in mode ok,
// byte for byte (Python's json.dumps).
const taskgraderReport = `{"executions": [{"name": "exec0", "testsReports": [{"checker": {"stdout": {"data": "100"}}}]}], "solutions": [], "big": 12345678901234567890}`

// setupTaskgrader returns an Exec running the stand-in taskgrader in mode,
// which fails unless its stdin is the JSON document expect.
func setupTaskgrader(t *testing.T, sandbox, mode, expect string) *Exec {
	t.Helper()
	e := &Exec{
		Command:  []string{"testdata/taskgrader.py", mode},
		Env:      []string{"EXPECT=" + expect},
		WorkRoot: t.TempDir(),
		Taskgrader: &Taskgrader{
			RootPath:      "/srv/tasks",
			ZipRoot:       "/srv/zips",
			Vars:          map[string]string{"TASKS": "/srv/tasks", "COURSE": "c1"},
			RestrictPaths: []string{"/srv/server-only"},
		},
	}
	if sandbox == "sandbox" {
		sandboxed(t, e)
	}
	return e
}

// TestTaskgraderInput checks what taskgrader reads on stdin: the bare
// jobdata with rootPath, taskPath and restrictToPaths as graderserver
// makes them. The stand-in compares its stdin with the expected document.
func TestTaskgraderInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		jobdata  string
		restrict []string // the platform's registered restrict_paths
		expect   string
	}{
		{
			name: "root path, the job's own restrictions with variables, the server's",
			jobdata: `{"taskPath":"$ROOT_PATH/t1","extraParams":{"solutionContent":"print(1)","n":12345678901234567890},` +
				`"restrictToPaths":["$TASKS/common","${TASKS}/$COURSE","$$HOME","$UNKNOWN","${TASKS"]}`,
			expect: `{"rootPath":"/srv/tasks","taskPath":"/srv/tasks/t1","extraParams":{"solutionContent":"print(1)","n":12345678901234567890},` +
				`"restrictToPaths":["/srv/tasks/common","/srv/tasks/c1","$HOME","$UNKNOWN","${TASKS","/srv/server-only"]}`,
		},
		{
			name:     "the platform's registered paths replace the job's own",
			jobdata:  `{"taskPath":"/abs/t2","restrictToPaths":["/anywhere"],"solutions":"@defaultSolutions"}`,
			restrict: []string{"$TASKS/course1"},
			expect:   `{"rootPath":"/srv/tasks","taskPath":"/abs/t2","restrictToPaths":["/srv/tasks/course1","/srv/server-only"],"solutions":"@defaultSolutions"}`,
		},
		{
			name:    "a zip task",
			jobdata: `{"taskPath":"zip:abc123"}`,
			expect:  `{"rootPath":"/srv/tasks","taskPath":"/srv/zips/abc123/","restrictToPaths":["/srv/server-only"]}`,
		},
		{
			name:    "one path as a string",
			jobdata: `{"taskPath":"$ROOT_PATH/t","restrictToPaths":"$TASKS/t"}`,
			expect:  `{"rootPath":"/srv/tasks","taskPath":"/srv/tasks/t","restrictToPaths":["/srv/tasks/t","/srv/server-only"]}`,
		},
		{
			name:    "no taskPath is passed on for taskgrader to refuse",
			jobdata: `{"extraParams":{}}`,
			expect:  `{"rootPath":"/srv/tasks","extraParams":{},"restrictToPaths":["/srv/server-only"]}`,
		},
	}
	for _, sb := range modes {
		for _, tc := range tests {
			t.Run(sb+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				e := setupTaskgrader(t, sb, "ok", tc.expect)
				res := run(t, context.Background(), e, Job{JobID: 7, LeaseID: 9, Attempt: 1,
					JobData: []byte(tc.jobdata), RestrictPaths: tc.restrict, Timeout: promptly})
				want := outcome{Outcome: outOK,
					Result: `{"errorcode":0,"errormsg":"Taskgrader executed successfully.\n","jobdata":` + taskgraderReport + `}`}
				if diff := cmp.Diff(want, summary(res)); diff != "" {
					t.Errorf("result (-want +got):\n%s\nlog:\n%s", diff, res.Log)
				}
			})
		}
	}
}

// TestTaskgraderNoServerPaths: without paths of the server's or the
// platform's, restrictToPaths is left out, as graderserver leaves it.
func TestTaskgraderNoServerPaths(t *testing.T) {
	t.Parallel()
	e := setupTaskgrader(t, "sandbox", "ok", `{"rootPath":"/r","taskPath":"/r/t"}`)
	e.Taskgrader = &Taskgrader{RootPath: "/r"}
	res := run(t, context.Background(), e, Job{JobData: []byte(`{"taskPath":"$ROOT_PATH/t"}`), Timeout: promptly})
	if res.Outcome != outOK {
		t.Fatalf("outcome %v (%s), want OK; log:\n%s", res.Outcome, res.Error, res.Log)
	}
}

// TestTaskgraderOutcomes checks taskgrader's output and exit status
// becoming graderserver's result.
func TestTaskgraderOutcomes(t *testing.T) {
	t.Parallel()
	const jobdata = `{"taskPath":"$ROOT_PATH/t1"}`
	const expect = `{"rootPath":"/srv/tasks","taskPath":"/srv/tasks/t1","restrictToPaths":["/srv/server-only"]}`
	fatalEnvelope := func(stdout, stderr string) string {
		b, _ := json.Marshal("Fatal taskgrader error.\nstdout:\n" + stdout + "\nstderr:\n" + stderr)
		return `{"errorcode":1,"errormsg":` + string(b) + `}`
	}
	tests := []struct {
		name    string
		mode    string
		jobdata string
		want    outcome
	}{
		{
			name: "an empty report is a fatal error",
			mode: "empty",
			want: outcome{Outcome: outFatal, Result: fatalEnvelope("{}\n", ""),
				Error: "taskgrader exited with status 0 but its output is empty ({})"},
		},
		{
			name: "output that is not JSON is a fatal error",
			mode: "notjson",
			want: outcome{Outcome: outFatal, Result: fatalEnvelope("Traceback (most recent call last): not JSON\n", ""),
				Error: `grader printed something that is not JSON on stdout (exit status 0); it starts with "Traceback (most recent call last): not JSON"`},
		},
		{
			name: "exit 1 is a fatal error",
			mode: "fatal",
			want: outcome{Outcome: outFatal, Result: fatalEnvelope("", "Exception: defaultParams.json in `/tasks/t1` is invalid.\n"),
				Error: "grader reported a fatal error (exit status 1): Exception: defaultParams.json in `/tasks/t1` is invalid."},
		},
		{
			name: "exit 2 is temporary",
			mode: "temporary",
			want: outcome{Outcome: outTemp, Error: "grader asked for a retry (exit status 2): TemporaryException raised"},
		},
		{
			name: "an unsupported language (3) goes to another server",
			mode: "unsupported",
			want: outcome{Outcome: outTemp, Error: "grader exited with status 3: UnsupportedLanguage raised: cobol"},
		},
		{
			name:    "jobdata that is not an object",
			mode:    "ok",
			jobdata: `["taskPath"]`,
			want:    outcome{Outcome: outFatal, Error: "taskgrader mode: jobdata must be a JSON object (taskgrader's input)"},
		},
		{
			name:    "a zip id that is a path",
			mode:    "ok",
			jobdata: `{"taskPath":"zip:../etc"}`,
			want:    outcome{Outcome: outFatal, Error: `taskgrader mode: taskPath "zip:../etc": a zip task's id must be one file name`},
		},
		{
			name:    "restrictToPaths that is not a list",
			mode:    "ok",
			jobdata: `{"taskPath":"/t","restrictToPaths":{"a":1}}`,
			want:    outcome{Outcome: outFatal, Error: "taskgrader mode: jobdata's restrictToPaths must be a list of paths"},
		},
	}
	for _, sb := range modes {
		for _, tc := range tests {
			t.Run(sb+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				e := setupTaskgrader(t, sb, tc.mode, expect)
				jd := tc.jobdata
				if jd == "" {
					jd = jobdata
				}
				res := run(t, context.Background(), e, Job{JobData: []byte(jd), Timeout: promptly})
				if diff := cmp.Diff(tc.want, summary(res)); diff != "" {
					t.Errorf("result (-want +got):\n%s\nlog:\n%s", diff, res.Log)
				}
			})
		}
	}
}

func TestSafeSubstitute(t *testing.T) {
	t.Parallel()
	vars := map[string]string{"A": "/a", "b_1": "x"}
	for in, want := range map[string]string{
		"$A/t":        "/a/t",
		"${A}x":       "/ax",
		"$Ax":         "$Ax", // the name is Ax, which is unknown
		"$$A":         "$A",
		"$b_1$A":      "x/a",
		"$":           "$",
		"$1":          "$1",
		"${A":         "${A",
		"no variable": "no variable",
	} {
		if got := safeSubstitute(in, vars); got != want {
			t.Errorf("safeSubstitute(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPythonEmpty(t *testing.T) {
	t.Parallel()
	for doc, want := range map[string]bool{
		"null": true, "false": true, `""`: true, "{}": true, "{ }": true, "[]": true, "0": true, "0.0": true,
		"true": false, `"x"`: false, `{"a":0}`: false, "[0]": false, "1": false, "-0.5": false,
	} {
		if got := pythonEmpty([]byte(doc)); got != want {
			t.Errorf("pythonEmpty(%s) = %v, want %v", doc, got, want)
		}
	}
}
