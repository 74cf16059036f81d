package platform

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"unicode/utf8"

	"github.com/gradebroker/gradebroker/broker"
)

// What DialectGraderqueue reads differently, each after graderqueue's
// www/api.php.

// graderqueueFields are the members of a graderqueue platform's sendjob
// and sendsolution beside those of jobSpec and sendSolutionPayload.
type graderqueueFields struct {
	// Taskrevision was the task's svn revision, for graderserver to
	// update the task to; graderd does not (the README says why), so it
	// only tells two submissions apart in userTaskKey.
	Taskrevision string `json:"taskrevision"`
}

// userTaskKey is the idempotency key of a graderqueue platform's job with
// jobusertaskid id. graderqueue's platforms send one id per user and task
// (France-ioi's: "task-user-platform") with every submission, and api.php
// replaced the queued job of that id with the new one. Here each distinct
// submission is a job of its own, graded and called back under its own
// jobname, and only the same submission sent again (a retry after a lost
// answer) is the same job: the key is the id and a digest of what the job
// is made of.
func userTaskKey(id string, nj broker.NewJob, gq graderqueueFields) string {
	b, _ := json.Marshal(struct {
		Name         string          `json:"name"`
		Priority     int             `json:"priority"`
		Tags         []string        `json:"tags"`
		TimeoutMS    int64           `json:"timeout_ms"`
		Taskrevision string          `json:"taskrevision"`
		JobData      json.RawMessage `json:"jobdata"`
	}{nj.Name, nj.Priority, nj.Tags, nj.Timeout.Milliseconds(), gq.Taskrevision, nj.JobData})
	sum := sha256.Sum256(b)
	return id + "#" + base64.RawURLEncoding.EncodeToString(sum[:16])
}

// graderqueueExtensions are api.php's $CFG_defaultexts as its configuration
// template ships them: the extension of a solution sent as solcontent.
var graderqueueExtensions = map[string]string{
	"c": ".c", "cpp": ".cpp", "java": ".java", "javascool": ".jvs", "ocaml": ".ml",
	"pascal": ".pas", "py": ".py", "sh": ".sh",
}

// graderqueueSolutionJobdata builds the taskgrader input of a graderqueue
// platform's sendsolution as api.php built it, and returns the solution's
// file name too (api.php names the job after it). The solution is the
// first of solpath, solcontent (empty ones count as absent, as api.php
// counts them), the solfile uploaded beside the token, or solfile in the
// token.
func graderqueueSolutionJobdata(p sendSolutionPayload, upload *Upload) ([]byte, string, error) {
	switch {
	case p.Taskpath == "":
		return nil, "", errors.New("taskpath missing from request")
	case !p.Memlimit.set:
		return nil, "", errors.New("memlimit missing from request")
	case !p.Timelimit.set:
		return nil, "", errors.New("timelimit missing from request")
	case p.Lang == "":
		return nil, "", errors.New("lang missing from request")
	}
	extra := map[string]any{}
	switch {
	case p.Solpath != nil && *p.Solpath != "":
		extra["solutionFilename"] = path.Base(*p.Solpath)
		extra["solutionPath"] = *p.Solpath
	case p.Solcontent != nil && *p.Solcontent != "":
		ext, ok := graderqueueExtensions[p.Lang]
		if !ok {
			ext = ".sh" // api.php's "[default]"
		}
		extra["solutionFilename"] = "main" + ext
		extra["solutionContent"] = *p.Solcontent
	case upload != nil:
		if !utf8.Valid(upload.Content) {
			return nil, "", errors.New("solfile is not UTF-8 text, which taskgrader's JSON input cannot carry")
		}
		// PHP keeps only the base name of an uploaded file.
		extra["solutionFilename"] = path.Base(upload.Name)
		extra["solutionContent"] = string(upload.Content)
	case p.Solfile != nil:
		content, err := base64.StdEncoding.DecodeString(p.Solfile.ContentBase64)
		if err != nil {
			return nil, "", fmt.Errorf("solfile.content_base64 is not standard base64: %w", err)
		}
		if !utf8.Valid(content) {
			return nil, "", errors.New("solfile is not UTF-8 text, which taskgrader's JSON input cannot carry")
		}
		extra["solutionFilename"] = p.Solfile.Name
		extra["solutionContent"] = string(content)
	default:
		return nil, "", errors.New("solution missing from request: send solpath, solcontent or solfile")
	}
	name, _ := extra["solutionFilename"].(string)
	if name == "" || name == "." || name == "/" {
		return nil, "", errors.New("the solution's file name is empty")
	}
	params := taskgraderParams(max(1, p.Timelimit.v), max(4, p.Memlimit.v))
	extra["solutionId"] = "sol-" + name
	extra["solutionExecId"] = "exec-" + name
	extra["solutionLanguage"] = p.Lang
	extra["solutionDependencies"] = "@defaultDependencies-" + p.Lang
	extra["defaultSolutionCompParams"] = params
	extra["defaultSolutionExecParams"] = params
	jd, err := json.Marshal(map[string]any{"taskPath": p.Taskpath, "extraParams": extra})
	return jd, name, err
}
