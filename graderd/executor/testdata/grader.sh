#!/bin/sh
# A grader for the executor's tests; $1 picks how it behaves.
case "$1" in
echo)      # the stdin document, as the result
	cat ;;
fatal)     # a final error with a result
	cat >/dev/null
	echo 'the task is broken' >&2
	echo '{"error":"bad task"}'
	exit 1 ;;
fatal-empty)
	echo 'no result for you' >&2
	exit 1 ;;
retry)
	echo 'disk full' >&2
	exit 2 ;;
exit7)
	exit 7 ;;
signal)
	kill -KILL $$ ;;
notjson)
	echo 'hello <world> "x"'
	exit 0 ;;
notjson-fatal)
	echo 'Traceback, not JSON'
	exit 1 ;;
empty)
	exit 0 ;;
flood)     # an endless result
	while :; do echo '"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"'; done ;;
chatty)    # 'B' then 10000 'x' then 'E' on stderr
	printf B >&2
	head -c 10000 /dev/zero | tr '\0' x >&2
	printf E >&2
	echo '{}' ;;
workdir)   # describes its working directory
	printf '{"cwd":"%s","mode":"%s","entries":%d,"tmpdir":"%s"}\n' \
		"$PWD" "$(stat -c %a .)" "$(ls -A | wc -l)" "$TMPDIR"
	touch leftover ;;
hang)      # ignores SIGTERM, and so does a grandchild holding stdout open
	trap '' TERM
	echo $$ >"$PIDFILE.grader"
	sh -c 'echo $$ >"$PIDFILE.grandchild"; exec sleep 1000' &
	sleep 1000 ;;
escape)    # leaves a process outside its group holding stdout open
	setsid sh -c 'echo $$ >"$PIDFILE.escapee"; exec sleep 60' &
	while [ ! -s "$PIDFILE.escapee" ]; do sleep 0.05; done
	echo '{"ok":true}' ;;
sleep)
	exec sleep 1000 ;;
*)
	echo "unknown mode $1" >&2
	exit 3 ;;
esac
