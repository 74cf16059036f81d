#!/usr/bin/python3
"""A gradebroker platform in Python: tokens, sendjob, getjob, callbacks.

It uses Debian's python3-jwcrypto (JOSE) and python3-requests (HTTPS), and
nothing else outside the standard library:

    apt-get install python3-jwcrypto python3-requests

Run it with Debian's interpreter, /usr/bin/python3, where those packages
are installed.

Every request is a token: a JWS signed RS512 with the platform's key (kid =
the platform's name) holding the request's claims, inside a JWE encrypted
RSA-OAEP-256 + A256CBC-HS512 to the broker's key. Every result callback is
the same two layers the other way round. See the README beside this file.

    python3 gradebroker_platform.py run --url https://127.0.0.1:18443 \\
        --ca dev/ca.crt --platform demo --key dev/demo-token.key \\
        --listen 127.0.0.1:9999 --tags python3 \\
        --jobdata '{"task": "sum", "lang": "python3", "solution": "print(1)"}'
"""

import argparse
import http.server
import json
import queue
import sys
import threading
import time
import uuid

import requests
from jwcrypto import jwe, jwk, jws
from jwcrypto.common import json_encode

# What gradebroker's tokens use, and all a reader of its callbacks accepts.
JWE_ALG, JWE_ENC, JWS_ALG = "RSA-OAEP-256", "A256CBC-HS512", "RS512"
# exp - iat of our tokens; the broker accepts up to 10 minutes.
LIFETIME = 300
# Clock difference tolerated on callbacks, and their longest lifetime.
SKEW, MAX_LIFETIME = 60, 600


class RefusedError(Exception):
    """A callback token that must not be trusted."""


class Platform:
    """One platform of one broker: its keys, and the broker's.

    url is the broker's HTTPS gateway, ca the CA file that checks its
    certificate (or True for the system's), name the platform's registered
    name, key_pem its RSA private key. The broker's keys come from its JWKS
    (GET /v1/keys): the encryption key, and the key whose kid is broker,
    which signs callbacks.
    """

    def __init__(self, url, ca, name, key_pem, broker="gradebroker"):
        self.url = url.rstrip("/")
        self.ca = ca
        self.name = name
        self.broker = broker
        self.key = jwk.JWK.from_pem(key_pem)
        jwks = requests.get(self.url + "/v1/keys", verify=ca, timeout=10)
        jwks.raise_for_status()
        keys = jwk.JWKSet.from_json(jwks.text)
        self.enc_key = next(k for k in keys if k.get("use") == "enc")
        self.sig_key = keys.get_key(broker)
        if self.sig_key is None:
            raise ValueError("the broker's JWKS has no signing key named %r" % broker)
        self.seen = {}  # jti -> exp, of callbacks accepted
        self.delivered = set()  # delivery_id of callbacks accepted

    def token(self, request, fields):
        """A token for request with the request's own fields."""
        now = int(time.time())
        claims = dict(fields, request=request, iat=now, exp=now + LIFETIME,
                      jti=uuid.uuid4().hex, aud=self.broker)
        inner = jws.JWS(json_encode(claims).encode())
        inner.add_signature(self.key, alg=None,
                            protected=json_encode({"alg": JWS_ALG, "kid": self.name}))
        outer = jwe.JWE(inner.serialize(compact=True).encode(),
                        protected=json_encode({"alg": JWE_ALG, "enc": JWE_ENC, "cty": "JWT",
                                               "kid": self.enc_key.get("kid")}))
        outer.add_recipient(self.enc_key)
        return outer.serialize(compact=True)

    def call(self, path, request, fields):
        """POSTs a token to path and returns the answer, or raises with the
        broker's message."""
        r = requests.post(self.url + path, json={"token": self.token(request, fields)},
                          verify=self.ca, timeout=90)
        body = r.json()
        if r.status_code != 200:
            raise RuntimeError("%s: HTTP %d: %s" % (request, r.status_code, body.get("message")))
        return body

    def sendjob(self, jobdata, jobname="", tags="", idempotency_key=""):
        """Queues a job; returns its id."""
        fields = {"jobdata": jobdata, "jobname": jobname, "tags": tags}
        if idempotency_key:
            fields["idempotency_key"] = idempotency_key
        return int(self.call("/v1/jobs", "sendjob", fields)["job_id"])

    def getjob(self, job_id, wait_seconds=0):
        """The job, waiting up to wait_seconds for it to be final."""
        return self.call("/v1/jobs:get", "getjob", {"jobid": job_id, "wait_seconds": wait_seconds})["job"]

    def open_callback(self, token):
        """Decrypts and verifies a callback token; returns its payload.

        Raises RefusedError for anything that is not a fresh callback
        signed by the broker for this platform. A callback seen before (the
        same delivery_id: the broker retries until acknowledged) comes back
        with "duplicate": True, to acknowledge without acting twice.
        """
        try:
            outer = jwe.JWE(algs=[JWE_ALG, JWE_ENC])
            outer.deserialize(token, key=self.key)
        except Exception as err:  # jwcrypto raises several kinds
            raise RefusedError("cannot decrypt: %s" % err)
        hdr = outer.jose_header
        if hdr.get("alg") != JWE_ALG or hdr.get("enc") != JWE_ENC or hdr.get("zip", "DEF") != "DEF":
            raise RefusedError("JWE algorithms %r" % hdr)
        try:
            inner = jws.JWS()
            inner.allowed_algs = [JWS_ALG]
            inner.deserialize(outer.payload.decode())
            if inner.jose_header.get("alg") != JWS_ALG or inner.jose_header.get("kid") != self.broker:
                raise RefusedError("JWS header %r" % inner.jose_header)
            inner.verify(self.sig_key, alg=JWS_ALG)
        except RefusedError:
            raise
        except Exception as err:
            raise RefusedError("bad signature: %s" % err)
        claims = json.loads(inner.payload)
        now = time.time()
        aud = claims.get("aud")
        if aud != self.name and not (isinstance(aud, list) and self.name in aud):
            raise RefusedError("aud %r is not this platform" % aud)
        if "request" in claims:
            raise RefusedError("a request, not a callback")
        iat, exp, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)) or not jti:
            raise RefusedError("iat, exp and jti are required")
        if exp < now - SKEW or iat > now + SKEW or exp - iat > MAX_LIFETIME:
            raise RefusedError("stale or too long-lived: iat %s, exp %s" % (iat, exp))
        self.seen = {j: e for j, e in self.seen.items() if e >= now - SKEW}
        if jti in self.seen:
            raise RefusedError("replayed jti %r" % jti)
        self.seen[jti] = exp
        claims["duplicate"] = claims.get("delivery_id") in self.delivered
        self.delivered.add(claims.get("delivery_id"))
        return claims


def serve_callbacks(platform, listen, got):
    """Serves the platform's return_url on listen (host:port, plain HTTP on
    loopback; behind TLS in production): each verified callback is put on
    the queue got and acknowledged with 200, anything else refused with 400.
    Returns the server, running in a thread."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            if length > 8 << 20:
                self.send_error(413)
                return
            try:
                token = json.loads(self.rfile.read(length))["token"]
                payload = platform.open_callback(token)
            except (ValueError, KeyError, TypeError, RefusedError) as err:
                self.send_response(400)
                self.end_headers()
                self.wfile.write(str(err).encode())
                return
            got.put(payload)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    host, port = listen.rsplit(":", 1)
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(args):
    """Sends one job, polls getjob until it is final, waits for its callback
    and prints both as JSON."""
    p = Platform(args.url, args.ca, args.platform, open(args.key, "rb").read(), args.broker)
    got = queue.Queue()
    server = serve_callbacks(p, args.listen, got)
    try:
        job_id = p.sendjob(json.loads(args.jobdata), args.jobname, args.tags, args.idempotency_key)
        deadline = time.time() + args.timeout
        while True:
            job = p.getjob(job_id, wait_seconds=min(10, args.timeout))
            if job["state"] in ("JOB_STATE_DONE", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"):
                break
            if time.time() > deadline:
                raise RuntimeError("job %d is still %s" % (job_id, job["state"]))
        while True:
            callback = got.get(timeout=max(1, deadline - time.time()))
            if callback.get("job_id") == job_id and not callback["duplicate"]:
                break
    finally:
        server.shutdown()
    json.dump({"job_id": job_id, "job": job, "callback": callback}, sys.stdout)
    print()


def verify(args):
    """Verifies one callback token, printing its payload (exit 0) or why
    it is refused (exit 1)."""
    p = Platform(args.url, args.ca, args.platform, open(args.key, "rb").read(), args.broker)
    try:
        json.dump(p.open_callback(args.token), sys.stdout)
        print()
    except RefusedError as err:
        print("refused: %s" % err, file=sys.stderr)
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the broker's HTTPS gateway, https://HOST:PORT")
    ap.add_argument("--ca", required=True, help="the CA file of the broker's certificate")
    ap.add_argument("--platform", required=True, help="the platform's registered name")
    ap.add_argument("--key", required=True, help="the platform's RSA private key (PEM)")
    ap.add_argument("--broker", default="gradebroker", help="the broker's name: the kid of its callbacks")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="send a job, poll getjob, wait for the callback")
    r.add_argument("--listen", required=True, help="host:port of the return_url registered for the platform")
    r.add_argument("--jobdata", required=True, help="the job's data, JSON")
    r.add_argument("--jobname", default="")
    r.add_argument("--tags", default="")
    r.add_argument("--idempotency-key", default="")
    r.add_argument("--timeout", type=float, default=60, help="seconds to wait for the result and the callback")
    v = sub.add_parser("verify", help="verify one callback token")
    v.add_argument("--token", required=True)
    args = ap.parse_args()
    {"run": run, "verify": verify}[args.command](args)


if __name__ == "__main__":
    main()
