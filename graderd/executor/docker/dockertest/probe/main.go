// Command probe is the grader of the docker executor's tests: a static
// binary, alone in a FROM-scratch image, that reads the job document on
// stdin and does what its jobdata's "probe" field says, mostly trying to get
// out of its container, and prints what it managed as its JSON result.
//
//	echo     print {"doc": <the document as read>, "file": <JobFile's content>}
//	look     report who and where it is: uid, capabilities, no_new_privs,
//	         seccomp, which of jobdata.paths exist (and the type and size
//	         of the file system each is on), which of jobdata.write it
//	         could write, its environment, network interfaces, and the
//	         result of dialling each of jobdata.dial (TCP host:port)
//	fork     start children until a fork fails, then exit 2
//	grab     start jobdata.n children that each hold jobdata.mib MiB
//	spin     use CPU for ever
//	hang     sleep for ever, printing jobdata.marker on stderr first
//	fill     write /tmp/fill until the disk is full, then exit 1
//	out      print jobdata.n bytes on stdout
//	exit     exit with status jobdata.code, printing jobdata.stdout
//
// Run as "probe serve" it is instead a student's service: it listens on
// $PORT and answers GET /look?path=P&write=W&dial=ADDR (each repeatable)
// with what look reports, so that a scenarios test sees the student's
// container from inside.
//
// Children are the probe itself, run as "probe child sleep" or "probe
// child grab MIB".
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type jobdata struct {
	Probe  string   `json:"probe"`
	Paths  []string `json:"paths"`
	Write  []string `json:"write"`
	Dial   []string `json:"dial"`
	File   string   `json:"file"`
	N      int      `json:"n"`
	MiB    int      `json:"mib"`
	Code   int      `json:"code"`
	Stdout string   `json:"stdout"`
	Marker string   `json:"marker"`
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		serve()
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "child" {
		child(os.Args[2:])
		return
	}
	doc, _ := io.ReadAll(os.Stdin)
	var in struct {
		JobData jobdata `json:"jobdata"`
	}
	if err := json.Unmarshal(doc, &in); err != nil {
		fmt.Fprintln(os.Stderr, "probe: bad job document:", err)
		os.Exit(1)
	}
	j := in.JobData
	switch j.Probe {
	case "echo":
		file := ""
		if j.File != "" {
			b, err := os.ReadFile(j.File)
			if err != nil {
				file = "error: " + err.Error()
			} else {
				file = string(b)
			}
		}
		print(map[string]any{"doc": string(doc), "file": file})
	case "look":
		look(j)
	case "fork":
		n := 0
		for {
			if err := exec.Command("/proc/self/exe", "child", "sleep").Start(); err != nil {
				fmt.Fprintf(os.Stderr, "probe: fork %d failed: %v\n", n, err)
				os.Exit(2)
			}
			n++
		}
	case "grab":
		var cmds []*exec.Cmd
		for range j.N {
			c := exec.Command("/proc/self/exe", "child", "grab", strconv.Itoa(j.MiB))
			c.Stderr = os.Stderr
			if err := c.Start(); err != nil {
				fmt.Fprintln(os.Stderr, "probe:", err)
				os.Exit(2)
			}
			cmds = append(cmds, c)
		}
		for _, c := range cmds {
			_ = c.Wait()
		}
		os.Exit(3)
	case "spin":
		for {
		}
	case "hang":
		fmt.Fprintln(os.Stderr, j.Marker)
		time.Sleep(time.Hour)
	case "fill":
		f, err := os.Create("/tmp/fill")
		if err == nil {
			buf := make([]byte, 1<<20)
			for err == nil {
				_, err = f.Write(buf)
			}
		}
		fmt.Fprintln(os.Stderr, "probe: /tmp:", err)
		os.Exit(1)
	case "out":
		os.Stdout.Write(bytes.Repeat([]byte("x"), j.N))
	case "exit":
		fmt.Print(j.Stdout)
		fmt.Fprintln(os.Stderr, "probe: exiting with", j.Code)
		os.Exit(j.Code)
	default:
		fmt.Fprintf(os.Stderr, "probe: unknown probe %q\n", j.Probe)
		os.Exit(1)
	}
}

func child(args []string) {
	switch args[0] {
	case "sleep":
		time.Sleep(time.Hour)
	case "grab":
		mib, _ := strconv.Atoi(args[1])
		b := make([]byte, mib<<20)
		for i := 0; i < len(b); i += 4096 {
			b[i] = 1
		}
		time.Sleep(time.Hour)
		_ = b[0]
	}
}

func serve() {
	http.HandleFunc("/look", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(report(jobdata{Paths: q["path"], Write: q["write"], Dial: q["dial"]}))
	})
	if err := http.ListenAndServe(":"+os.Getenv("PORT"), nil); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func look(j jobdata) { print(report(j)) }

func report(j jobdata) map[string]any {
	r := map[string]any{"uid": os.Getuid(), "gid": os.Getgid(), "env": os.Environ()}
	wd, _ := os.Getwd()
	r["cwd"] = wd
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			switch k {
			case "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp":
				r[k] = strings.TrimSpace(v)
			}
		}
	}
	visible := []string{}
	fs := map[string]any{}
	for _, p := range j.Paths {
		if _, err := os.Stat(p); err == nil {
			visible = append(visible, p)
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(p, &st); err == nil {
			fs[p] = map[string]any{"type": strconv.FormatInt(int64(st.Type), 16), "size": int64(st.Blocks) * st.Bsize}
		}
	}
	r["visible"] = visible
	r["fs"] = fs
	written := []string{}
	for _, p := range j.Write {
		if err := os.WriteFile(p, []byte("x"), 0o600); err == nil {
			written = append(written, p)
		}
	}
	r["written"] = written
	dial := map[string]string{}
	for _, a := range j.Dial {
		c, err := net.DialTimeout("tcp", a, 3*time.Second)
		if err != nil {
			dial[a] = err.Error()
			continue
		}
		c.Close()
		dial[a] = "connected"
	}
	r["dial"] = dial
	var ifaces []string
	if list, err := net.Interfaces(); err == nil {
		for _, i := range list {
			ifaces = append(ifaces, i.Name)
		}
	}
	r["interfaces"] = ifaces
	r["chown"] = errString(syscall.Chown("/tmp", 0, 0))
	return r
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func print(v any) {
	b, _ := json.Marshal(v)
	os.Stdout.Write(append(b, '\n'))
}
