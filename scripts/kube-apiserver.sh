#!/usr/bin/env bash
# Builds kube-apiserver from the k8s.io/kubernetes Go module (through the Go
# module proxy, like any dependency) and caches the binary outside the
# checkout, for the Kubernetes executor's tests (envtest needs a real API
# server; Debian ships etcd but no kube-apiserver).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/kube-apiserver.sh [--print-dir] [--version vX.Y.Z]

Builds kube-apiserver VERSION (default v1.37.2) once and caches it in
  ${GB_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gradebroker/kube}/VERSION/
next to a link to Debian's etcd, so that the directory can be used as
KUBEBUILDER_ASSETS. A cached binary is reused; a cold build takes about ten
minutes on two cores and needs about 2 GB in the Go build cache.

  --print-dir   print the assets directory (building it first if needed)
  --version V   the k8s.io/kubernetes release to build
  -h, --help    this text

The build is a small module of its own, made in a temporary directory:
require k8s.io/kubernetes, one replace per staging module that kubernetes'
own go.mod replaces (read from the module proxy's copy of that go.mod),
and a main that calls app.NewAPIServerCommand().
EOF
}

version=v1.37.2
print_dir=false
while [ $# -gt 0 ]; do
  case "$1" in
    --print-dir) print_dir=true ;;
    --version) version="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "kube-apiserver.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

cache="${GB_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gradebroker/kube}/$version"
bin="$cache/kube-apiserver"
log() { if $print_dir; then echo "$@" >&2; else echo "$@"; fi; }

etcd_bin=$(command -v etcd || true)
if [ -z "$etcd_bin" ] && [ -x /usr/bin/etcd ]; then etcd_bin=/usr/bin/etcd; fi
if [ -z "$etcd_bin" ]; then
  echo "kube-apiserver.sh: etcd not found; install Debian's etcd-server (apt-get install etcd-server)" >&2
  exit 1
fi

if [ ! -x "$bin" ]; then
  log "building kube-apiserver $version into $cache (about ten minutes on two cores)"
  mkdir -p "$cache"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cd "$work"
  gomod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  if [ -z "$gomod" ] || [ ! -f "$gomod" ]; then
    echo "kube-apiserver.sh: cannot download k8s.io/kubernetes@$version's go.mod from the module proxy" >&2
    exit 1
  fi
  staging=${version#v}
  staging="v0.${staging#*.}"  # v1.37.2 -> v0.37.2, the staging modules' version
  {
    echo "module gradebroker.local/kubeapiserver"
    echo
    sed -n 's/^go \(.*\)/go \1/p' "$gomod"
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$gomod" | sed -n 's#^\s*\(k8s\.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$staging"'#p'
    echo ")"
  } > go.mod
  cat > main.go <<'EOF'
// Command kube-apiserver is Kubernetes' API server, built from the
// k8s.io/kubernetes module for gradebroker's tests.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
EOF
  go mod tidy >&2
  go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version" -o "$bin.tmp" . >&2
  mv "$bin.tmp" "$bin"
  log "built $bin"
fi
ln -sf "$etcd_bin" "$cache/etcd"
if $print_dir; then
  echo "$cache"
else
  "$bin" --version
  "$cache/etcd" --version | head -n 1
fi
