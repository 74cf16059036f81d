#!/usr/bin/env bash
# Runs gradebroker on embedded defaults: a dev PKI, a broker on a fresh
# SQLite file, one graderd with the sample grader, and a platform that
# submits a real Python solution through the REST gateway with a real token
# and receives the encrypted result callback.
#
#   scripts/demo.sh demo   submit one job, print its result and the callback, stop
#   scripts/demo.sh run    the same, then keep running until Ctrl-C
#
# Everything lives under ./dev (git-ignored); nothing is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-demo}
case "$mode" in
  demo|run) ;;
  -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  *) echo "usage: scripts/demo.sh demo|run" >&2; exit 2 ;;
esac

GRPC=127.0.0.1:17443
HTTP=127.0.0.1:18443
METRICS=127.0.0.1:19090
CONSOLE=127.0.0.1:18444
CALLBACK=127.0.0.1:19999
for b in bin/broker bin/graderd bin/samplegrader; do
  [ -x "$b" ] || { echo "demo: $b is missing; run 'make build' first" >&2; exit 1; }
done

mkdir -p dev
bash scripts/gb-dev-pki.sh dev >/dev/null
rm -rf dev/demo.db dev/demo.db-wal dev/demo.db-shm dev/spool dev/work
mkdir -p dev/work dev/run
log() { printf '\n== %s\n' "$*"; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

log "bootstrapping the first operator (admin) in dev/demo.db"
bin/broker admin bootstrap --db dev/demo.db --name admin --cert dev/clients/admin.crt --ca dev/ca.crt

log "starting the broker (gRPC $GRPC, REST gateway https://$HTTP, console https://$CONSOLE); log in dev/broker.log"
bin/broker serve --database dev/demo.db --grpc-addr "$GRPC" --http-addr "$HTTP" --metrics-addr "$METRICS" \
  --console-addr "$CONSOLE" \
  --ca-file dev/ca.crt --cert-file dev/broker.crt --key-file dev/broker.key \
  --token-key-file dev/broker-token.key >dev/broker.log 2>&1 &
pids+=($!)
export GB_ADMIN_ADDR=$GRPC GB_ADMIN_CA=dev/ca.crt GB_ADMIN_CERT=dev/clients/admin.crt GB_ADMIN_KEY=dev/clients/admin.key
ready=no
for _ in $(seq 1 100); do
  if bin/broker admin operator list >/dev/null 2>&1; then ready=yes; break; fi
  sleep 0.1
done
[ $ready = yes ] || { echo "broker did not start; dev/broker.log says:" >&2; cat dev/broker.log >&2; exit 1; }
log "registering a tag, a server type, the grading server and the platform"
bin/broker admin tag add python3 --description "Python 3 solutions"
bin/broker admin type add python --tags python3
bin/broker admin server add grader1 --cert dev/clients/grader1.crt --type python --max-jobs 4
bin/broker admin platform add demo --key dev/demo-token.pub --return-url "http://$CALLBACK/callback"

config=examples/demo/graderd.yaml
if [ "$(id -u)" != 0 ]; then
  # graderd sandboxes runs only as root; without root the demo runs the
  # sample grader unconfined, and says so.
  echo "demo: not root: the sample grader runs WITHOUT graderd's sandbox (sandbox: none); run as root to see it sandboxed" >&2
  config=dev/graderd-unsandboxed.yaml
  sed -e '/^sandbox:/,/^  state_dir:/d' -e '/read_only_paths:/d' -e 's/^  command: \[bin\/samplegrader\]/&\n  sandbox: none/' \
    examples/demo/graderd.yaml >"$config"
fi
log "starting graderd (grader1, sample grader); log in dev/graderd.log"
bin/graderd --config "$config" --broker "$GRPC" >dev/graderd.log 2>&1 &
pids+=($!)

export GB_PLATFORM_URL="https://$HTTP" GB_PLATFORM=demo GB_PLATFORM_KEY=dev/demo-token.key \
  GB_BROKER_KEY=dev/broker-token.pub GB_CA=dev/ca.crt
log "starting the platform's callback receiver on http://$CALLBACK/callback"
rm -f dev/callback.json
bin/broker platform receive --listen "$CALLBACK" --once >dev/callback.json 2>dev/receiver.log &
receiver=$!
pids+=($receiver)
for _ in $(seq 1 50); do grep -q "listening" dev/receiver.log 2>/dev/null && break; sleep 0.1; done

log "checking the platform's token (test)"
bin/broker platform test

solution=$(cat examples/solutions/sum_ok.py)
job=$(python3 -c 'import json,sys; print(json.dumps({"jobname":"demo: sum_ok.py","tags":"python3","idempotency_key":"demo-1","jobdata":{"task":"sum","lang":"python3","solution":sys.argv[1]}}))' "$solution")
log "sending a job (sendjob) through the REST gateway"
resp=$(bin/broker platform sendjob "$job")
echo "$resp"
id=$(printf '%s' "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')

log "waiting for job $id (getjob --wait 30s)"
bin/broker platform getjob "$id" --wait 30s

log "the result callback the platform received (decrypted and verified)"
wait "$receiver" || true
cat dev/callback.json

if [ "$mode" = run ]; then
  log "the web console: open this one-time link within 10 minutes (make another with 'bin/broker admin console-login')"
  bin/broker admin console-login
  echo "(the dev CA in dev/ca.crt is private: your browser warns once; accept it, or import dev/ca.crt, or see"
  echo " console_cert_file in the README)"
  log "running: broker on $GRPC / https://$HTTP, console https://$CONSOLE, graderd grader1. Try:"
  echo "  export GB_ADMIN_ADDR=$GRPC GB_ADMIN_CA=dev/ca.crt GB_ADMIN_CERT=dev/clients/admin.crt GB_ADMIN_KEY=dev/clients/admin.key"
  echo "  bin/broker admin job list"
  echo "  export GB_PLATFORM_URL=https://$HTTP GB_PLATFORM=demo GB_PLATFORM_KEY=dev/demo-token.key GB_BROKER_KEY=dev/broker-token.pub GB_CA=dev/ca.crt"
  echo "  bin/broker platform sendjob '{\"tags\":\"python3\",\"jobdata\":{\"task\":\"sum\",\"solution\":\"print(0)\"}}'"
  echo "Ctrl-C stops everything."
  wait "${pids[0]}"
fi
