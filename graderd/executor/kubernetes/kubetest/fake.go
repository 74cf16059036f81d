package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/gradebroker/gradebroker/graderd/executor/kubernetes/podentry"
)

// Grading is what a FakeGrader saw and did: the document it read, and the
// grader's end as gbpod would report it.
type Grading struct {
	// Document is the job document gbpod would feed the grader, put
	// together from the pod's Secrets as gbpod does.
	Document []byte
	// Options are gbpod's arguments in the pod.
	Options podentry.Options
}

// FakeGrader is a Runtime that runs no process: it reads the pod as gbpod
// would (its arguments, the job document from the Secrets), calls Grade,
// and writes the report and the log that gbpod would write for that end.
// Grade gets ctx, which ends when the pod is deleted.
type FakeGrader func(ctx context.Context, g Grading) (exit int, result, log []byte)

// Run implements Runtime.
func (f FakeGrader) Run(ctx context.Context, pod *corev1.Pod, secrets map[string]*corev1.Secret) Exit {
	main := pod.Spec.Containers[0]
	if len(main.Args) < 1 || main.Args[0] != "run" {
		return Exit{Code: 125, Reason: "Error", Message: []byte("not gbpod run")}
	}
	opts, err := podentry.ParseArgs(main.Args[1:])
	if err != nil {
		return Exit{Code: 2, Reason: "Error", Log: []byte(err.Error())}
	}
	var doc []byte
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			for _, item := range s.Secret.Items {
				doc = append(doc, secrets[s.Secret.Name].Data[item.Key]...)
			}
		}
	}
	start := time.Now()
	var rep podentry.Report
	var result, log []byte
	if int64(len(doc)) != opts.DocLen {
		rep.Error = fmt.Sprintf("document of %d bytes, not %d", len(doc), opts.DocLen)
	} else {
		rep.Exit, result, log = f(ctx, Grading{Document: doc, Options: opts})
		if ctx.Err() != nil {
			return Exit{Code: 143, Reason: "Error"}
		}
		if int64(len(result)) > opts.MaxStdout {
			rep.StdoutOver, result = true, result[:opts.MaxStdout]
		}
	}
	rep.Wall = int64(time.Since(start))
	msg, inline, err := podentry.Encode(rep, result, log)
	if err != nil {
		return Exit{Code: 125, Reason: "Error", Log: []byte(err.Error())}
	}
	out := bytes.Clone(log)
	if !inline && rep.Error == "" {
		out = append(out, podentry.Trailer(result)...)
	}
	reason := "Completed"
	if rep.Exit != 0 {
		reason = "Error"
	}
	return Exit{Code: int32(rep.Exit), Reason: reason, Message: msg, Log: out}
}

// Echo is a FakeGrader that answers every job with its own document, and
// logs a line.
func Echo(_ context.Context, g Grading) (int, []byte, []byte) {
	return 0, g.Document, []byte("echoed " + strings.TrimSpace(fmt.Sprint(len(g.Document))) + " bytes\n")
}
