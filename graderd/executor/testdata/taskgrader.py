#!/usr/bin/python3
# A stand-in for France-ioi's taskgrader in the executor's tests. It reads
# its standard input as taskgrader does (one JSON document) and checks it
# against $EXPECT, the document graderserver would have sent: on any
# difference it says so on stderr and exits 9, which no mode below uses.
# Then $1 picks what it answers.
import json, os, sys

raw = sys.stdin.read()
try:
    got = json.loads(raw)
except ValueError as err:
    print("stdin is not one JSON document: %s: %r" % (err, raw[:200]), file=sys.stderr)
    sys.exit(9)
want = json.loads(os.environ["EXPECT"])
if got != want:
    print("stdin differs from graderserver's: got %s want %s"
          % (json.dumps(got, sort_keys=True), json.dumps(want, sort_keys=True)), file=sys.stderr)
    sys.exit(9)

mode = sys.argv[1]
if mode == "ok":
    # The shape of a taskgrader report, big integers included.
    print(json.dumps({"executions": [{"name": "exec0", "testsReports": [{"checker": {"stdout": {"data": "100"}}}]}],
                      "solutions": [], "big": 12345678901234567890}))
elif mode == "empty":
    print("{}")
elif mode == "notjson":
    print("Traceback (most recent call last): not JSON")
elif mode == "fatal":
    print("Exception: defaultParams.json in `/tasks/t1` is invalid.", file=sys.stderr)
    sys.exit(1)
elif mode == "temporary":
    print("TemporaryException raised", file=sys.stderr)
    sys.exit(2)
elif mode == "unsupported":
    print("UnsupportedLanguage raised: cobol", file=sys.stderr)
    sys.exit(3)
else:
    print("unknown mode %s" % mode, file=sys.stderr)
    sys.exit(9)
