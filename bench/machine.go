package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gradebroker/gradebroker/broker/store"
)

// Machine describes where the benchmark ran.
type Machine struct {
	CPUModel   string
	NCPU       int
	GOMAXPROCS int
	MemTotal   string
	Kernel     string
	GoVersion  string
	SQLite     string
	DirFS      string // file system of the database directory
	FsyncP50   time.Duration
	FsyncP99   time.Duration
	LoadStart  string
	LoadEnd    string
	// WakeP50 and WakeP99 are how late a 1 ms sleep wakes up: the
	// scheduling noise floor under every latency figure.
	WakeP50, WakeP99 time.Duration
}

// Describe reads the machine's description; dir is where databases live.
func Describe(dir string) Machine {
	m := Machine{NCPU: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version(),
		CPUModel: "unknown", MemTotal: "unknown", Kernel: "unknown"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if kb := meminfoKB("MemTotal"); kb > 0 {
		m.MemTotal = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.SQLite = store.SQLiteVersion()
	m.DirFS = fsOf(dir)
	m.FsyncP50, m.FsyncP99 = fsyncProbe(dir, 200)
	m.LoadStart = loadavg()
	m.WakeP50, m.WakeP99 = wakeProbe(500)
	return m
}

// wakeProbe sleeps 1 ms n times and returns how late it woke up.
func wakeProbe(n int) (p50, p99 time.Duration) {
	ds := make([]time.Duration, n)
	for i := range ds {
		t := time.Now()
		time.Sleep(time.Millisecond)
		ds[i] = max(0, time.Since(t)-time.Millisecond)
	}
	slices.Sort(ds)
	return ds[n/2], ds[n*99/100]
}

func loadavg1() string {
	f := strings.Fields(loadavg())
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func meminfoKB(key string) int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == key {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// fsOf names the file system type dir is on, from /proc/mounts.
func fsOf(dir string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "unknown"
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "unknown"
	}
	best, typ := "", "unknown"
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		mp := f[1]
		if (abs == mp || strings.HasPrefix(abs, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, typ = mp, f[2]
		}
	}
	return typ
}

// fsyncProbe times n 4 KiB write+fsync pairs in dir: the floor under every
// synchronous=FULL commit.
func fsyncProbe(dir string, n int) (p50, p99 time.Duration) {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return 0, 0
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	ds := make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		t := time.Now()
		if _, err := f.WriteAt(buf, int64(i%64)*4096); err != nil {
			return 0, 0
		}
		if err := f.Sync(); err != nil {
			return 0, 0
		}
		ds = append(ds, time.Since(t))
	}
	slices.Sort(ds)
	return ds[n/2], ds[n*99/100]
}

// procStatus reads VmRSS and VmHWM (kB) of a process.
func procStatus(pid int) (rssKB, hwmKB int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rssKB = n
		case "VmHWM":
			hwmKB = n
		}
	}
	return rssKB, hwmKB, nil
}
