"""A handler for the real xqueue-watcher in gradebroker's tests
(e2e/xqwatcher_test.go): xqueue-watcher's own Grader, which parses the
submission and its grader_payload, finds the grader under grader_root and
renders the result, with grade() filled in. It also fetches the
submission's files from the links in xqueue_files, as a custom handler
does, without a session, and names them with their SHA-256 in a test of
its result."""

import hashlib
import json

import requests

from xqueue_watcher.grader import Grader


class FileGrader(Grader):
    def __init__(self, *args, **kwargs):
        # No fork: the files fetched here are read by grade().
        kwargs.setdefault("fork_per_item", False)
        super().__init__(*args, **kwargs)
        self.fetched = {}

    def __call__(self, content):
        files = json.loads(content["xqueue_files"])
        self.fetched = {}
        for name, url in files.items():
            r = requests.get(url, timeout=5)
            r.raise_for_status()
            self.fetched[name] = r.content
        return super().__call__(content)

    def grade(self, grader_path, grader_config, student_response):
        expected = grader_path.read_text().strip()
        ok = student_response.strip() == expected
        tests = [("answer", "", ok, expected, student_response)]
        if self.fetched:
            summary = ", ".join(
                "%s=%s" % (name, hashlib.sha256(data).hexdigest()) for name, data in sorted(self.fetched.items())
            )
            tests.append(("files", summary, True, "", ""))
        return {"correct": ok, "score": 1 if ok else 0, "tests": tests, "errors": []}
