#!/usr/bin/env bash
# Prepares this machine for gradebroker's tests, then runs a command in it:
# `make test` is `scripts/test-env.sh make test-run`. CI (.ci/run) and a
# developer on a fresh machine get the same set-up from the same place.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/test-env.sh COMMAND [ARG...]

Makes sure that what gradebroker's tests use is here, then runs COMMAND:

  Debian packages  gcc, openssl, python3 (with jwcrypto and requests), crun,
                   util-linux (prlimit), chromium, docker.io, etcd-server,
                   php-cli and php-phpseclib3. Missing ones are installed with
                   apt-get when running as root; otherwise the script names
                   them and stops.
  Docker engine    the one DOCKER_HOST (or /var/run/docker.sock) names when it
                   answers; else, as root, a dockerd of this script's own on
                   its own socket and data root, without iptables or a bridge
                   (the tests need no network), stopped when COMMAND ends.
  kube-apiserver   built once by scripts/kube-apiserver.sh and cached outside
                   the checkout (a cold build takes about ten minutes).

The tests never skip: whatever is still missing makes them fail, saying what.

  -h, --help  this text
EOF
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac

missing=()
command -v gcc >/dev/null || missing+=(gcc)
command -v openssl >/dev/null || missing+=(openssl)
# graderd sandboxes every run with crun (the tests run real sandboxed graders,
# as root); prlimit serves runs without a cgroup.
command -v crun >/dev/null || missing+=(crun)
command -v prlimit >/dev/null || missing+=(util-linux)
# The console's browser tests drive chromium (headless).
command -v chromium >/dev/null || missing+=(chromium)
# The docker and scenarios executors' tests run real containers.
command -v dockerd >/dev/null || missing+=(docker.io)
# The kubernetes executor's tests run a real kube-apiserver with etcd.
command -v etcd >/dev/null || [ -x /usr/bin/etcd ] || missing+=(etcd-server)
# The platform examples (e2e/examples_test.go): Debian's python3 with
# jwcrypto and requests (a python3 first in PATH may be another one), and PHP
# with phpseclib.
/usr/bin/python3 -c 'import jwcrypto, requests' 2>/dev/null || missing+=(python3 python3-jwcrypto python3-requests)
command -v php >/dev/null || missing+=(php-cli)
[ -r /usr/share/php/phpseclib3/autoload.php ] || missing+=(php-phpseclib3)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "test-env: the tests need these Debian packages: ${missing[*]}" >&2
    echo "  as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "test-env: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

if ! docker version >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "test-env: no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}" >&2
    echo "  start one as root: dockerd --iptables=false --ip6tables=false --bridge=none &" >&2
    echo "  (or run this script as root, which starts one for the tests' duration)" >&2
    exit 1
  fi
  echo "test-env: starting a dockerd for the tests (no Docker engine answers)"
  run_dir=/run/gb-test-docker
  mkdir -p "$run_dir"
  dockerd --host "unix://$run_dir/docker.sock" --data-root /var/lib/gb-test-docker --exec-root "$run_dir/exec" \
    --pidfile "$run_dir/dockerd.pid" --iptables=false --ip6tables=false --bridge=none >"$run_dir/dockerd.log" 2>&1 &
  dockerd_pid=$!
  trap 'kill "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid" 2>/dev/null || true' EXIT
  export DOCKER_HOST="unix://$run_dir/docker.sock"
  for _ in $(seq 1 120); do
    docker version >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { echo "test-env: dockerd exited:" >&2; cat "$run_dir/dockerd.log" >&2; exit 1; }
    sleep 0.5
  done
  docker version >/dev/null 2>&1 || { echo "test-env: dockerd did not answer within 60 s:" >&2; cat "$run_dir/dockerd.log" >&2; exit 1; }
fi

bash "$(dirname "$0")/kube-apiserver.sh"

echo "test-env: $(go version | cut -d' ' -f3-), $(crun --version | head -n 1), $(chromium --version 2>/dev/null), Docker $(docker version --format '{{.Server.Version}}')"
"$@"
