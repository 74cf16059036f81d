package platform

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"

	gbv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// claimFields are in every payload message but read by package token.
var claimFields = []string{"request", "iat", "exp", "jti", "aud"}

// TestPayloadStructsMatchProto keeps the decoding structs in step with the
// *Payload messages of platform.proto, which document them.
func TestPayloadStructsMatchProto(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		msg protoreflect.ProtoMessage
		v   any
	}{
		{&gbv1.JobSpec{}, jobSpec{}},
		{&gbv1.SendJobPayload{}, jobSpec{}},
		{&gbv1.SendJobsPayload{}, sendJobsPayload{}},
		{&gbv1.SendSolutionPayload{}, sendSolutionPayload{}},
		{&gbv1.GetJobPayload{}, jobRef{}},
	} {
		var want []string
		fields := c.msg.ProtoReflect().Descriptor().Fields()
		for i := range fields.Len() {
			if name := string(fields.Get(i).Name()); !slices.Contains(claimFields, name) {
				want = append(want, name)
			}
		}
		var got []string
		rt := reflect.TypeOf(c.v)
		for i := range rt.NumField() {
			got = append(got, strings.Split(rt.Field(i).Tag.Get("json"), ",")[0])
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(want, got) {
			t.Errorf("%s fields %v, Go struct %T fields %v", c.msg.ProtoReflect().Descriptor().Name(), want, c.v, got)
		}
	}
	// CancelJobPayload is GetJobPayload without wait_seconds.
	if n := (&gbv1.CancelJobPayload{}).ProtoReflect().Descriptor().Fields().ByName("jobid"); n == nil {
		t.Error("CancelJobPayload has no jobid")
	}
}

func TestFlexibleFields(t *testing.T) {
	t.Parallel()
	var s jobSpec
	err := decodePayload([]byte(`{"priority":"7","timeout_sec":30.0,"tags":" a, b ,,c","jobdata":"{\"x\":1}"}`), &s)
	if err != nil {
		t.Fatal(err)
	}
	if s.Priority.v != 7 || s.TimeoutSec.v != 30 || !slices.Equal([]string(s.Tags), []string{"a", "b", "c"}) {
		t.Errorf("decoded %+v", s)
	}
	if jd, err := normalizeJobdata(s.Jobdata); err != nil || string(jd) != `{"x":1}` {
		t.Errorf("jobdata = %s, %v", jd, err)
	}
	for _, bad := range []string{`{"priority":"high"}`, `{"priority":1.5}`, `{"tags":5}`} {
		if err := decodePayload([]byte(bad), &s); err == nil {
			t.Errorf("%s decoded without error", bad)
		}
	}
	for _, bad := range []string{``, `null`, `5`, `"not json"`} {
		if _, err := normalizeJobdata(json.RawMessage(bad)); err == nil {
			t.Errorf("jobdata %s accepted", bad)
		}
	}
}

// FuzzPayload decodes arbitrary payloads as every request does: it must
// never panic, and accepted jobdata must be valid JSON.
func FuzzPayload(f *testing.F) {
	for _, seed := range []string{
		`{"jobdata":{"a":1},"tags":"x,y","priority":"3","timeout_sec":10}`,
		`{"jobs":[{"jobdata":"{}","tags":["a"]}]}`,
		`{"taskpath":"t","lang":"python3","solfile":{"name":"a.py","content_base64":"cHJpbnQoMSk="},"memlimit":"1024"}`,
		`{"jobid":"17","wait_seconds":5}`,
		`{"taskpath":"$ROOT_PATH/t","lang":"py","memlimit":0,"timelimit":"1000","solcontent":"","solpath":"a/b.py","taskrevision":"12"}`,
		`{"jobdata":"{\"x\":[1,2,3]}"}`,
		`[]`, `{"priority":1e400}`, `{"tags":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var spec jobSpec
		if decodePayload(b, &spec) == nil {
			if jd, err := normalizeJobdata(spec.Jobdata); err == nil && !json.Valid(jd) {
				t.Fatalf("accepted jobdata %q is not JSON", jd)
			}
		}
		var batch sendJobsPayload
		_ = decodePayload(b, &batch)
		var sol sendSolutionPayload
		if decodePayload(b, &sol) == nil {
			if jd, err := solutionJobdata(sol); err == nil && !json.Valid(jd) {
				t.Fatalf("solution jobdata %q is not JSON", jd)
			}
			if jd, name, err := graderqueueSolutionJobdata(sol, &Upload{Name: "dir/up.c", Content: b}); err == nil && (!json.Valid(jd) || name == "") {
				t.Fatalf("graderqueue's solution jobdata %q (file %q) is not JSON", jd, name)
			}
		}
		var gq graderqueueFields
		_ = decodePayload(b, &gq)
		var ref jobRef
		_ = decodePayload(b, &ref)
	})
}

// TestSolutionJobdataLimits: a solution's limits reach taskgrader as whole
// parameter sets that replace the task's defaults, so they are given both
// or not at all.
func TestSolutionJobdataLimits(t *testing.T) {
	t.Parallel()
	src := "print(1)"
	for _, tc := range []struct {
		name       string
		mem, time  flexInt
		wantParams bool
		wantErr    string
	}{
		{name: "neither: the task's defaults", wantParams: false},
		{name: "both", mem: flexInt{65536, true}, time: flexInt{1000, true}, wantParams: true},
		{name: "memory only", mem: flexInt{65536, true}, wantErr: "memlimit and timelimit go together"},
		{name: "time only", time: flexInt{1000, true}, wantErr: "memlimit and timelimit go together"},
	} {
		jd, err := solutionJobdata(sendSolutionPayload{Taskpath: "t", Lang: "python3", Solcontent: &src, Memlimit: tc.mem, Timelimit: tc.time})
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err = %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var doc struct{ Solutions, Executions string }
		// extraParams mixes strings and objects: read it key by key.
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(jd, &raw); err != nil {
			t.Fatal(err)
		}
		_ = json.Unmarshal(raw["solutions"], &doc.Solutions)
		_ = json.Unmarshal(raw["executions"], &doc.Executions)
		var extra map[string]json.RawMessage
		if err := json.Unmarshal(raw["extraParams"], &extra); err != nil {
			t.Fatal(err)
		}
		if doc.Solutions != "@defaultEvaluationSolutions" || doc.Executions != "@defaultEvaluationExecutions" {
			t.Errorf("%s: solutions %q, executions %q; want the variables genJson writes", tc.name, doc.Solutions, doc.Executions)
		}
		for _, k := range []string{"defaultSolutionCompParams", "defaultSolutionExecParams"} {
			p, ok := extra[k]
			if ok != tc.wantParams {
				t.Errorf("%s: %s present = %v, want %v", tc.name, k, ok, tc.wantParams)
				continue
			}
			if !ok {
				continue
			}
			var params map[string]any
			if err := json.Unmarshal(p, &params); err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{"timeLimitMs", "memoryLimitKb", "useCache", "stdoutTruncateKb", "stderrTruncateKb", "getFiles"} {
				if _, ok := params[key]; !ok {
					t.Errorf("%s: %s lacks %s, which taskgrader reads", tc.name, k, key)
				}
			}
		}
	}
}
