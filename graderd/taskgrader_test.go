package graderd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// TestTaskgraderExecutor runs a graderd whose executor has a taskgrader
// key, as a deployment configures it: the grader reads the bare jobdata
// with rootPath and the rewritten taskPath, sees the task under root_path
// (shown to the sandboxed run without being listed in read_only_paths),
// and its output comes back as graderserver's result.
func TestTaskgraderExecutor(t *testing.T) {
	t.Parallel()
	d := layout(t)
	root := filepath.Join(d.varLib, "tasks")
	if err := os.MkdirAll(filepath.Join(root, "t1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "t1", "defaultParams.json"), []byte(`{"from":"the task"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// A stand-in taskgrader: it reads its task's defaultParams.json from
	// the taskPath it was given and reports what it read and received.
	script := `exec python3 -c 'import json,os,sys
doc = json.load(sys.stdin)
params = json.load(open(os.path.join(doc["taskPath"], "defaultParams.json")))
print(json.dumps({"stdin": doc, "params": params}))'`
	d.configure(t, script, "", "  taskgrader:\n    root_path: "+root+"\n    restrict_paths: [/srv/common]\n")
	d.start(t)
	bs := d.fb.nextStream(t)
	res := d.job(t, bs, &gradebrokerv1.Assign{JobId: 3, LeaseId: 4, Jobdata: []byte(`{"taskPath":"$ROOT_PATH/t1","extraParams":{"x":1}}`)})
	var got struct {
		Errorcode int
		Errormsg  string
		Jobdata   struct {
			Stdin  map[string]any
			Params map[string]string
		}
	}
	resultOf(t, res, &got)
	stdin, _ := json.Marshal(got.Jobdata.Stdin)
	want := `{"extraParams":{"x":1},"restrictToPaths":["/srv/common"],"rootPath":"` + root + `","taskPath":"` + root + `/t1"}`
	if got.Errorcode != 0 || got.Errormsg != "Taskgrader executed successfully.\n" || string(stdin) != want || got.Jobdata.Params["from"] != "the task" {
		t.Errorf("result %s\nwant errorcode 0, taskgrader's stdin %s and the task's defaultParams.json read", res.GetResult(), want)
	}
}
