#!/usr/bin/env python3
"""A test server for Resend's HTTP API, as Resend documents it.

Implements what edm uses, and only that, on 127.0.0.1:
  POST /emails   send one email (JSON body; `Idempotency-Key` header)
  GET  /domains  list the account's domains
References: resend.com/docs/api-reference/emails/send-email,
/docs/api-reference/errors, /docs/dashboard/emails/idempotency-keys,
resend.com/changelog/api-rate-limit.

Behaviour:
  * `Authorization: Bearer KEY` must be --key: none gives 401
    missing_api_key, another key 403 invalid_api_key. A --restricted-key
    may send but gets 401 restricted_api_key on GET /domains.
  * Errors are `{"statusCode": N, "name": "...", "message": "..."}`.
  * Every answer carries ratelimit-limit / ratelimit-remaining /
    ratelimit-reset; over --rate requests in a 1-second window the answer is
    429 rate_limit_exceeded with retry-after.
  * The sender's domain must be a verified domain (--domain NAME=STATUS):
    otherwise 403 validation_error "The D domain is not verified...".
  * Idempotency: the first successful response for a key is kept (24 hours
    at Resend; for the server's life here, and in --state so a restarted
    server keeps it); the same key and the same body get that response back
    without a second delivery; the same key and another body get 409
    invalid_idempotent_request; the same key while the first request is in
    progress gets 409 concurrent_idempotent_requests.
  * Rules (--rules FILE, JSON list) script answers per recipient:
    {"to": "a@x", "status": 422, "name": "validation_error",
     "message": "...", "times": 1, "retry_after": "1"}
    A rule without "to" applies to everyone. "times" (default: always)
    limits how often it fires. "delay_ms" holds the request that long first.
  * Every request is one JSON line in --log: {"kind": "request", ...}; every
    delivery (a new email accepted) a {"kind": "delivery", ...} line with the
    body as received, so tests count deliveries against requests.
"""

import argparse
import hashlib
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
IDEM = {}  # key -> {"hash": str, "status": int, "body": dict} or {"hash", "pending": True}
RULES = []  # dicts; "fired" counts
WINDOW = {"start": 0.0, "count": 0}
ARGS = None


def log(entry):
    if not ARGS.log:
        return
    line = json.dumps(entry, sort_keys=True) + "\n"
    with LOCK:
        with open(ARGS.log, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


def persist(key, record):
    if not ARGS.state:
        return
    with open(ARGS.state, "a", encoding="utf-8") as f:
        f.write(json.dumps({"key": key, **record}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def load_state():
    if ARGS.state and os.path.exists(ARGS.state):
        with open(ARGS.state, encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                IDEM[r.pop("key")] = r


def domains():
    out = {}
    for d in ARGS.domain:
        name, _, status = d.partition("=")
        out[name.lower()] = status or "verified"
    return out


def error(status, name, message):
    return status, {"statusCode": status, "name": name, "message": message}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
        pass

    def answer(self, status, body, extra=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        try:
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client died (the crash tests kill edm mid-request).
            self.close_connection = True

    def ratelimit(self):
        """The window's headers, and whether this request is over the rate."""
        now = time.monotonic()
        with LOCK:
            if now - WINDOW["start"] >= 1.0:
                WINDOW["start"], WINDOW["count"] = now, 0
            WINDOW["count"] += 1
            count = WINDOW["count"]
            reset = max(1, int(round(1.0 - (now - WINDOW["start"]))))
        headers = {
            "ratelimit-limit": str(ARGS.rate),
            "ratelimit-remaining": str(max(0, ARGS.rate - count)),
            "ratelimit-reset": str(reset),
        }
        return headers, count > ARGS.rate

    def auth(self, path):
        got = self.headers.get("authorization", "")
        if not got.startswith("Bearer ") or not got[7:].strip():
            return error(401, "missing_api_key", "Missing API key in the authorization header.")
        key = got[7:].strip()
        if key == ARGS.key:
            return None
        if ARGS.restricted_key and key == ARGS.restricted_key:
            if path.startswith("/domains"):
                return error(401, "restricted_api_key", "This API key is restricted to only send emails.")
            return None
        return error(403, "invalid_api_key", "API key is invalid.")

    def do_GET(self):
        rl, _ = self.ratelimit()
        path = self.path.split("?")[0]
        if path != "/domains":
            return self.answer(*error(404, "not_found", "The requested endpoint does not exist."), rl)
        bad = self.auth(path)
        if bad:
            log({"kind": "request", "path": path, "status": bad[0]})
            return self.answer(*bad, rl)
        data = [
            {"id": str(uuid.uuid5(uuid.NAMESPACE_DNS, n)), "name": n, "status": s,
             "created_at": "2026-01-01T00:00:00.000Z", "region": "us-east-1"}
            for n, s in domains().items()
        ]
        log({"kind": "request", "path": path, "status": 200})
        self.answer(200, {"object": "list", "has_more": False, "data": data}, rl)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0") or 0)
        raw = self.rfile.read(length)
        rl, over = self.ratelimit()
        path = self.path.split("?")[0]
        key = self.headers.get("idempotency-key")
        entry = {"kind": "request", "path": path, "key": key, "t": time.time()}
        status, body, extra = self.handle_post(path, raw, key, over, entry)
        entry["status"] = status
        log(entry)
        self.answer(status, body, {**rl, **extra})

    def handle_post(self, path, raw, key, over, entry):
        if path != "/emails":
            return (*error(404, "not_found", "The requested endpoint does not exist."), {})
        bad = self.auth(path)
        if bad:
            return (*bad, {})
        if over:
            return (*error(429, "rate_limit_exceeded",
                           "Too many requests. Please limit the number of requests per second."),
                    {"retry-after": "1"})
        try:
            email = json.loads(raw)
        except ValueError:
            return (*error(400, "validation_error", "Invalid JSON body."), {})
        to = email.get("to")
        to = to[0] if isinstance(to, list) and to else to
        entry["to"] = to
        digest = hashlib.sha256(raw).hexdigest()
        entry["sha256"] = digest
        missing = [f for f in ("from", "to", "subject") if not email.get(f)]
        if missing:
            return (*error(422, "missing_required_field", "Missing `%s` field." % missing[0]), {})
        if key is not None and not 1 <= len(key) <= 256:
            return (*error(400, "invalid_idempotency_key", "The key must be between 1-256 chars."), {})
        sender = email["from"].rsplit("<", 1)[-1].rstrip(">").strip()
        domain = sender.rsplit("@", 1)[-1].lower()
        if domains().get(domain) != "verified":
            return (*error(403, "validation_error",
                           "The %s domain is not verified. Please, add and verify your domain." % domain), {})
        if key is not None:
            with LOCK:
                seen = IDEM.get(key)
                if seen is None:
                    IDEM[key] = {"hash": digest, "pending": True}
            if seen is not None:
                if seen["hash"] != digest:
                    return (*error(409, "invalid_idempotent_request",
                                   "Same idempotency key used with a different request payload."), {})
                if seen.get("pending"):
                    return (*error(409, "concurrent_idempotent_requests",
                                   "Same idempotency key used while original request is still in progress."), {})
                entry["replayed"] = True
                return seen["status"], seen["body"], {}
        try:
            rule = self.rule_for(to)
            if rule is not None:
                if rule.get("delay_ms"):
                    time.sleep(rule["delay_ms"] / 1000.0)
                if rule.get("status", 200) != 200:
                    extra = {"retry-after": str(rule["retry_after"])} if "retry_after" in rule else {}
                    # Errors are not kept under the key: a retry is tried again.
                    self.forget(key)
                    return (*error(rule["status"], rule.get("name", "application_error"),
                                   rule.get("message", "")), extra)
            if ARGS.delay_ms:
                time.sleep(ARGS.delay_ms / 1000.0)
            email_id = str(uuid.uuid4())
            body = {"id": email_id}
            log({"kind": "delivery", "id": email_id, "key": key, "to": to, "email": email})
            if key is not None:
                record = {"hash": digest, "status": 200, "body": body}
                with LOCK:
                    IDEM[key] = record
                persist(key, record)
            return 200, body, {}
        except BaseException:
            self.forget(key)
            raise

    def forget(self, key):
        if key is None:
            return
        with LOCK:
            if IDEM.get(key, {}).get("pending"):
                del IDEM[key]

    def rule_for(self, to):
        with LOCK:
            for r in RULES:
                if r.get("to") not in (None, to):
                    continue
                if "times" in r and r.get("fired", 0) >= r["times"]:
                    continue
                r["fired"] = r.get("fired", 0) + 1
                return dict(r)
        return None


def main():
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--key", required=True, help="the API key that may do everything")
    p.add_argument("--restricted-key", help="a key that may only send")
    p.add_argument("--domain", action="append", default=[], help="NAME=STATUS (verified, pending...)")
    p.add_argument("--rules", help="JSON file: a list of rules")
    p.add_argument("--log", help="JSON lines file of requests and deliveries")
    p.add_argument("--state", help="JSON lines file keeping the idempotency table")
    p.add_argument("--rate", type=int, default=1000, help="requests per 1-second window")
    p.add_argument("--delay-ms", type=int, default=0, help="hold every accepted request this long")
    ARGS = p.parse_args()
    if ARGS.rules:
        with open(ARGS.rules, encoding="utf-8") as f:
            RULES.extend(json.load(f))
    load_state()
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
