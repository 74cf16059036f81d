#!/usr/bin/env bash
# Grades the sample student service (examples/todoservice), its correct and
# its buggy variant, by the todo scenario set, end to end: a broker on a
# fresh SQLite file, one graderd with the scenarios executor, and a platform
# that sends both jobs through the REST gateway with real tokens; then it
# prints each job's per-scenario records and stops.
#
# It needs a Docker engine (DOCKER_HOST, or /var/run/docker.sock) and the
# docker command. The images are made here, from static Go binaries, with
# `docker import`: nothing is pulled.
#
#   scripts/scenarios-demo.sh          (make scenarios-demo builds first)
#
# Everything lives under ./dev (git-ignored); nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,14p' "$0"; exit 0 ;; esac

GRPC=127.0.0.1:27443
HTTP=127.0.0.1:28443
METRICS=127.0.0.1:29090
for b in bin/broker bin/graderd bin/gb-scenario-runner; do
  [ -x "$b" ] || { echo "scenarios-demo: $b is missing; run 'make build' first" >&2; exit 1; }
done
command -v docker >/dev/null || { echo "scenarios-demo: the docker command is missing (apt-get install docker.io)" >&2; exit 1; }
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || {
  echo "scenarios-demo: no Docker engine answers; start one (as root: dockerd --iptables=false --ip6tables=false --bridge=none &)" >&2; exit 1; }
log() { printf '\n== %s\n' "$*"; }

mkdir -p dev
bash scripts/gb-dev-pki.sh dev >/dev/null
rm -rf dev/scenarios && mkdir -p dev/scenarios/work dev/scenarios/img

# image NAME DIR BINARY: a FROM-scratch image of one static binary, /app.
image() {
  local root=dev/scenarios/img/$1
  mkdir -p "$root/tmp" "$root/data" && chmod 1777 "$root/tmp"
  cp "$3" "$root/app"
  docker rmi "$2" >/dev/null 2>&1 || true   # the previous demo's, which would be left nameless
  tar --owner=0 --group=0 -C "$root" -c . | docker import -c 'ENTRYPOINT ["/app"]' - "$2" >/dev/null
  echo "  $2"
}
log "building the example's images locally (static Go binaries, docker import)"
CGO_ENABLED=0 go build -trimpath -o dev/scenarios/kvdb ./examples/kvdb
CGO_ENABLED=0 go build -trimpath -o dev/scenarios/todo-correct ./examples/todoservice
CGO_ENABLED=0 go build -trimpath -ldflags '-X main.variant=buggy' -o dev/scenarios/todo-buggy ./examples/todoservice
image kvdb gradebroker-example/kvdb:dev dev/scenarios/kvdb
image todo-correct gradebroker-example/todoservice:correct dev/scenarios/todo-correct
image todo-buggy gradebroker-example/todoservice:buggy dev/scenarios/todo-buggy

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

log "starting the broker (gRPC $GRPC, REST gateway https://$HTTP); log in dev/scenarios/broker.log"
bin/broker admin bootstrap --db dev/scenarios/demo.db --name admin --cert dev/clients/admin.crt --ca dev/ca.crt >/dev/null
bin/broker serve --database dev/scenarios/demo.db --grpc-addr "$GRPC" --http-addr "$HTTP" --metrics-addr "$METRICS" \
  --ca-file dev/ca.crt --cert-file dev/broker.crt --key-file dev/broker.key \
  --token-key-file dev/broker-token.key >dev/scenarios/broker.log 2>&1 &
pids+=($!)
export GB_ADMIN_ADDR=$GRPC GB_ADMIN_CA=dev/ca.crt GB_ADMIN_CERT=dev/clients/admin.crt GB_ADMIN_KEY=dev/clients/admin.key
ready=no
for _ in $(seq 1 100); do
  if bin/broker admin operator list >/dev/null 2>&1; then ready=yes; break; fi
  sleep 0.1
done
[ $ready = yes ] || { echo "broker did not start; dev/scenarios/broker.log says:" >&2; cat dev/scenarios/broker.log >&2; exit 1; }
bin/broker admin tag add service --description "students' HTTP services" >/dev/null
bin/broker admin type add services --tags service >/dev/null
bin/broker admin server add grader1 --cert dev/clients/grader1.crt --type services --max-jobs 2 >/dev/null
bin/broker admin platform add demo --key dev/demo-token.pub --return-url "http://127.0.0.1:29999/callback" >/dev/null

log "starting graderd (grader1, scenarios executor); log in dev/scenarios/graderd.log"
bin/graderd --config examples/scenarios/graderd.yaml >dev/scenarios/graderd.log 2>&1 &
pids+=($!)

export GB_PLATFORM_URL="https://$HTTP" GB_PLATFORM=demo GB_PLATFORM_KEY=dev/demo-token.key \
  GB_BROKER_KEY=dev/broker-token.pub GB_CA=dev/ca.crt
ids=()
for variant in correct buggy; do
  job=$(printf '{"jobname":"todo service, %s variant","tags":"service","timeout_sec":120,"jobdata":{"image":"gradebroker-example/todoservice:%s","scenarios":"todo"}}' "$variant" "$variant")
  resp=$(bin/broker platform sendjob "$job")
  id=$(printf '%s' "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
  log "sent job $id: the $variant variant (sendjob through the REST gateway)"
  ids+=("$id")
done

status=0
for id in "${ids[@]}"; do
  bin/broker platform getjob "$id" --wait 60s >"dev/scenarios/job-$id.json"
  python3 - "dev/scenarios/job-$id.json" <<'PY' || status=1
import json, sys
job = json.load(open(sys.argv[1]))["job"]
print("\n== job %s (%s): %s" % (job["id"], job["name"], job["state"]))
doc = json.loads(job.get("result") or "{}")
if job.get("error"):
    print("  error:", job["error"])
for r in doc.get("scenarios", []):
    print("  %-8s %-7s %-32s %s %s (%d ms)" % (r["status"], "public" if r["public"] else "private", r["name"], r["method"], r["path"], r["duration_ms"]))
    for line in (r.get("diff") or "").splitlines():
        print("           | " + line)
t = doc.get("totals", {})
if t:
    print("  totals: %d scenarios, %d success, %d fail, %d mismatch, %d timeout, %d error; score %.2f (ready after %d ms)" % (
        t["total"], t["success"], t["fail"], t["mismatch"], t["timeout"], t["error"], doc["score"], doc["ready_ms"]))
sys.exit(0 if doc.get("scenarios") else 1)
PY
done
[ $status = 0 ] || { echo "scenarios-demo: a job has no records; dev/scenarios/graderd.log says:" >&2; tail -20 dev/scenarios/graderd.log >&2; }
exit $status
