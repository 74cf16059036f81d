#!/usr/bin/env bash
# How crun was chosen: the cost of starting a no-op under each sandbox tool
# installed here (bubblewrap, crun, runc), beside /usr/bin/true, alternating
# so that all see the machine in the same state. The crun and runc rows use
# one OCI bundle (pid, mount, network, IPC, UTS, cgroup namespaces; a
# read-only root with /usr; a uid of its own); bubblewrap gets the same
# namespaces and mounts, and cannot by itself set a uid without a user
# namespace, cgroups, rlimits or a seccomp filter from names. Needs root.
#
#   bash bench/sandboxbench/runtimes.sh [RUNS]      (default 150)
set -euo pipefail
runs=${1:-150}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/rootfs"
for l in bin lib lib64 sbin; do [ -L "/$l" ] && ln -s "$(readlink "/$l")" "$dir/rootfs/$l"; done
cat >"$dir/config.json" <<JSON
{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},"hostname":"grader",
 "process":{"terminal":false,"user":{"uid":2000000000,"gid":2000000000},"args":["/usr/bin/true"],
  "env":["PATH=/usr/bin:/bin"],"cwd":"/","capabilities":{},"noNewPrivileges":true},
 "mounts":[{"destination":"/proc","type":"proc","source":"proc"},
  {"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755","size=64k"]},
  {"destination":"/usr","type":"bind","source":"/usr","options":["rbind","ro","nosuid","nodev"]}],
 "linux":{"namespaces":[{"type":"pid"},{"type":"network"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"cgroup"}]}}
JSON
cat >"$dir/cmp.py" <<'PY'
import json, resource, subprocess, sys, time
runs, variants = int(sys.argv[1]), json.loads(sys.argv[2])
wall = {k: [] for k in variants}; cpu = {k: 0.0 for k in variants}
for i in range(runs):
    for k, cmd in variants.items():
        c = [x.replace("%i", str(i)) for x in cmd]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN); t = time.perf_counter()
        if subprocess.run(c).returncode: sys.exit(k + " failed")
        wall[k].append((time.perf_counter() - t) * 1000); r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu[k] += (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1000
print("| tool | p50 | p99 | CPU per run |\n| --- | ---: | ---: | ---: |")
for k, ts in wall.items():
    ts.sort(); print("| %s | %.1f ms | %.1f ms | %.1f ms |" % (k, ts[len(ts)//2], ts[max(0, len(ts)*99//100-1)], cpu[k]/runs))
PY
variants=$(cat <<JSON
{"true": ["/usr/bin/true"],
 "bubblewrap": ["bwrap","--unshare-pid","--unshare-net","--unshare-ipc","--unshare-uts","--unshare-cgroup","--ro-bind","/usr","/usr","--symlink","usr/bin","/bin","--symlink","usr/lib","/lib","--symlink","usr/lib64","/lib64","--proc","/proc","--dev","/dev","--cap-drop","ALL","--clearenv","/usr/bin/true"],
 "crun": ["crun","--root","$dir/crun","--cgroup-manager=disabled","run","--bundle","$dir","c%i"],
 "runc": ["runc","--root","$dir/runc","run","--bundle","$dir","r%i"]}
JSON
)
echo "$(nproc) CPUs, $(uname -r), load $(cut -d' ' -f1 /proc/loadavg), $runs runs each"
# crun refuses to run on a "hybrid" cgroup host whose cgroup2 mount has
# controllers; graderd detaches that mount in the mount namespace it starts
# crun in, and so does this script.
unshare -m --propagation private sh -c "
  if [ -n \"\$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)\" ]; then umount -l /sys/fs/cgroup/unified; fi
  python3 '$dir/cmp.py' $runs '$variants'"
