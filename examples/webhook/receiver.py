#!/usr/bin/env python3
"""A webhook receiver for CIM, Python standard library only: answers the CloudEvents
validation handshake, verifies each call's Standard Webhooks signature, and prints one JSON
line per call. Copy `verify` into your own receiver; see README.md.

    python3 receiver.py --secret whsec_... [--port 8000]

The first line printed is {"listening": <port>}; then one line per call:
{"id": ..., "type": ..., "subject": ..., "valid": true|false, "data": {...}}.
"""

import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Calls signed longer ago (or further ahead) than this are refused: a replayed capture.
TOLERANCE_SECONDS = 5 * 60


def verify(secret: str, headers, body: bytes, now: float | None = None) -> bool:
    """True when `body` and `headers` (webhook-id, webhook-timestamp, webhook-signature) were
    signed with `secret` (whsec_<base64 key>) and the timestamp is recent."""
    try:
        msg_id = headers["webhook-id"]
        timestamp = headers["webhook-timestamp"]
        signatures = headers["webhook-signature"]
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        if abs((now or time.time()) - int(timestamp)) > TOLERANCE_SECONDS:
            return False
    except (KeyError, TypeError, ValueError):
        return False
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    # The header may carry several space-separated signatures (during a secret rotation).
    for candidate in signatures.split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return True
    return False


class Receiver(BaseHTTPRequestHandler):
    secret = ""

    def do_OPTIONS(self):  # noqa: N802 (the http.server naming)
        # The CloudEvents webhook validation handshake: allow the origin that asks.
        origin = self.headers.get("WebHook-Request-Origin")
        self.send_response(200 if origin else 400)
        if origin:
            self.send_header("WebHook-Allowed-Origin", origin)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        valid = verify(self.secret, self.headers, body)
        line = {
            "id": self.headers.get("ce-id"),
            "type": self.headers.get("ce-type"),
            "subject": self.headers.get("ce-subject"),
            "valid": valid,
            "data": json.loads(body or b"null") if valid else None,
        }
        print(json.dumps(line), flush=True)
        # 401 tells CIM to try again later; a forged call gets nothing else.
        self.send_response(204 if valid else 401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secret", required=True, help="the subscription's whsec_ secret")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    Receiver.secret = args.secret
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(json.dumps({"listening": server.server_address[1]}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
