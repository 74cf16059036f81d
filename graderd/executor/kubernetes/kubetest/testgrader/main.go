// Command testgrader is the grader of the kubernetes executor's tests that
// run real containers: it follows the exec convention and reports what it
// found in its container (identity, privileges, writable places, network),
// or does what its job's "mode" says.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

func main() {
	doc, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var in struct {
		JobData struct {
			Mode string `json:"mode"`
			Size int    `json:"size"`
			Code int    `json:"code"`
		} `json:"jobdata"`
	}
	if err := json.Unmarshal(doc, &in); err != nil {
		fmt.Fprintln(os.Stderr, "not JSON:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "testgrader: mode", in.JobData.Mode)
	switch in.JobData.Mode {
	case "big":
		fmt.Printf(`{"big":"%s"}`, strings.Repeat("b", in.JobData.Size))
	case "exit":
		fmt.Fprintln(os.Stderr, "exiting with", in.JobData.Code)
		os.Exit(in.JobData.Code)
	case "fill":
		f, err := os.Create("/tmp/fill")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		buf := bytes.Repeat([]byte("x"), 1<<20)
		for {
			if _, err := f.Write(buf); err != nil {
				fmt.Fprintln(os.Stderr, "write:", err)
				os.Exit(3)
			}
		}
	default:
		h := sha256.Sum256(doc)
		status, _ := os.ReadFile("/proc/self/status")
		field := func(name string) string {
			for _, l := range strings.Split(string(status), "\n") {
				if v, ok := strings.CutPrefix(l, name+":"); ok {
					return strings.TrimSpace(v)
				}
			}
			return ""
		}
		writable := func(dir string) bool {
			f, err := os.CreateTemp(dir, "w")
			if err != nil {
				return false
			}
			f.Close()
			os.Remove(f.Name())
			return true
		}
		var ifaces []string
		if l, err := net.Interfaces(); err == nil {
			for _, i := range l {
				ifaces = append(ifaces, i.Name)
			}
		}
		cwd, _ := os.Getwd()
		out, _ := json.Marshal(map[string]any{
			"uid": os.Getuid(), "gid": os.Getgid(), "cap_eff": field("CapEff"), "cap_bnd": field("CapBnd"),
			"no_new_privs": field("NoNewPrivs"), "seccomp": field("Seccomp"),
			"root_writable": writable("/"), "tmp_writable": writable("/tmp"), "job_writable": writable("/job"),
			"input_writable": writable("/gradebroker/input"), "cwd": cwd, "home": os.Getenv("HOME"),
			"doc_len": len(doc), "doc_sha256": hex.EncodeToString(h[:]), "interfaces": ifaces,
		})
		os.Stdout.Write(out)
	}
}
