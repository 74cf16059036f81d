package executor

import (
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The hardened profile of a sandboxed run, in the OCI runtime
// specification's terms so that every executor states it the same way: the
// exec executor hands it to crun in config.json, and a container executor
// can translate the same values into its engine's options.

// DefaultUIDBase is the first uid (and gid) of sandboxed runs: slot N runs
// as DefaultUIDBase+N. It sits far above the ranges distributions give to
// users (1000-60000), to systemd's dynamic users (61184-65519) and to
// user-namespace subordinate ids (usually from 100000, 65536 per user), and
// below 2^31 so that tools reading uids as signed 32-bit numbers agree.
const DefaultUIDBase = 2_000_000_000

// SandboxPath is the run's working directory inside the sandbox, HOME too.
const SandboxPath = "/job"

// systemDirs are exposed read-only to every sandboxed run, as they are on
// the host: a directory is bind-mounted, a symlink (/bin -> usr/bin on
// merged-/usr systems) is copied as a symlink. Missing ones are skipped.
var systemDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

// etcDefaults are the parts of /etc that ordinary programs need (the
// dynamic linker's cache, time zone, the alternatives symlinks that
// Debian's java and editors go through, name service settings), exposed
// read-only where they exist. All of /etc is not: it holds graderd's own
// configuration and keys (/etc/graderd), and often a co-located broker's
// (/etc/gradebroker). /etc/passwd, /etc/group and /etc/hosts are written
// for the run instead (see etcFiles). An executor adds what its graders
// need with read_only_paths (e.g. /etc/java-17-openjdk).
var etcDefaults = []string{
	"/etc/alternatives",
	"/etc/ld.so.cache",
	"/etc/ld.so.conf",
	"/etc/ld.so.conf.d",
	"/etc/localtime",
	"/etc/timezone",
	"/etc/nsswitch.conf",
	"/etc/protocols",
	"/etc/services",
	"/etc/mime.types",
	"/etc/os-release",
	"/etc/debian_version",
}

// DefaultEnv is the whole environment of a sandboxed run, before the
// executor's own variables (which may replace these): nothing of
// graderd's.
var DefaultEnv = []string{
	"PATH=/usr/local/bin:/usr/bin:/bin",
	"HOME=" + SandboxPath,
	"TMPDIR=/tmp",
	"LANG=C.UTF-8",
}

// Defaults of a sandboxed run's limits where the configuration leaves them
// out.
const (
	// DefaultPids bounds the processes and threads of a run.
	DefaultPids = 256
	// DefaultOpenFiles bounds each process's open files.
	DefaultOpenFiles = 1024
	// DefaultTmpSize is the size of /tmp (and of /dev/shm).
	DefaultTmpSize = 64 << 20
	// DefaultWorkSize is the size of the working directory.
	DefaultWorkSize = 256 << 20
)

// deniedSyscalls are refused with EPERM in every sandboxed run: graders and
// the solutions they run never need them, and each is a way out of a
// sandbox or into the kernel's less-used corners. Most need capabilities a
// run does not have anyway; the filter holds should one of those checks
// have a hole.
var deniedSyscalls = []string{
	// mounts, and the new mount API
	"mount", "umount2", "pivot_root", "chroot",
	"fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
	// other processes' memory and state
	"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
	// namespaces (clone with CLONE_NEWUSER: see seccompProfile)
	"unshare", "setns",
	// the kernel's attack surface
	"bpf", "perf_event_open", "userfaultfd",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	"keyctl", "add_key", "request_key",
	"kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
	"open_by_handle_at", "name_to_handle_at",
	"swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup",
	"iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime",
	"lookup_dcookie", "nfsservctl",
}

// SeccompProfile returns the seccomp filter of sandboxed runs: everything
// is allowed except deniedSyscalls and a clone that asks for a new user
// namespace (EPERM), and clone3 answers ENOSYS, since a filter cannot read
// its flags (they sit in memory), and C libraries then fall back to clone.
// System calls of other architectures than the machine's and its 32-bit
// compatibility modes kill the process.
func SeccompProfile() *specs.LinuxSeccomp {
	eperm, enosys := uint(unix.EPERM), uint(unix.ENOSYS)
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: seccompArches(),
		Syscalls: []specs.LinuxSyscall{
			{Names: deniedSyscalls, Action: specs.ActErrno, ErrnoRet: &eperm},
			{
				// The flags are clone's first argument on x86 and arm.
				Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &eperm,
				Args: []specs.LinuxSeccompArg{{Index: 0, Value: unix.CLONE_NEWUSER, ValueTwo: unix.CLONE_NEWUSER, Op: specs.OpMaskedEqual}},
			},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
}

func seccompArches() []specs.Arch {
	switch runtime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return nil // the native architecture only
}

// maskedProcPaths hide parts of /proc that tell about the host's kernel
// (and a few that would write to it), as container runtimes do by default.
var maskedProcPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
}

// readonlyProcPaths are parts of /proc a run may read but not write.
var readonlyProcPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// processProfile returns the hardened process of a sandboxed run: no
// capabilities at all, no_new_privs, the per-process open-file limit, no
// core dumps, and the highest OOM score, so that if the host itself runs
// out of memory a run dies before anything else.
func processProfile(uid, gid uint32, args, env []string, openFiles int) *specs.Process {
	oom := 1000
	return &specs.Process{
		User:            specs.User{UID: uid, GID: gid},
		Args:            args,
		Env:             env,
		Cwd:             SandboxPath,
		Capabilities:    &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{}},
		NoNewPrivileges: true,
		OOMScoreAdj:     &oom,
		Rlimits: []specs.POSIXRlimit{
			{Type: "RLIMIT_NOFILE", Hard: uint64(openFiles), Soft: uint64(openFiles)},
			{Type: "RLIMIT_CORE", Hard: 0, Soft: 0},
		},
	}
}
