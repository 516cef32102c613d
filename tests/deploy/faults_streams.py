"""The fault harness's stream reader and store-full switch (faults.py, through faults_load.py's
agents inside a namespace): JetStream API requests as an operator user over the raw NATS
protocol (stdlib only)."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import time


# How many times one JetStream API request is sent before its timeout fails the read (each waits
# up to the socket's timeout, 10 s).
REQUEST_TRIES = 6


class JsSession:
    """A JetStream API requester as an operator user (raw protocol, like rehearse.nats_session):
    request(subject, body) -> the answer; close() when done."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.n = 0
        self.connect()

    def connect(self):
        spec = self.spec
        self.s = socket.create_connection((spec["host"], spec["port"]), timeout=10)
        self.f = self.s.makefile("rb")
        self.f.readline()  # INFO
        connect = {"user": spec["user"], "pass": spec["password"], "verbose": False, "pedantic": False,
                   "headers": True, "no_responders": True, "name": "faults-reader"}  # fmt: skip
        self.inbox = f"_INBOX.faults{secrets.token_hex(4)}"
        self.s.sendall(f"CONNECT {json.dumps(connect)}\r\nSUB {self.inbox}.* 1\r\n".encode())

    def close(self):
        self.s.close()

    def request(self, subject: str, body: dict) -> dict:
        # JetStream answers no API request while the stream's or the cluster's leader is being
        # elected (seconds, right after a node is healed or killed): asked again on a new
        # connection (a socket file that timed out reads no more), so nothing of the old
        # answer's bytes can be taken for the new one.
        for _ in range(REQUEST_TRIES - 1):
            try:
                return self.request_once(subject, body)
            except TimeoutError:
                self.close()
                self.connect()
        return self.request_once(subject, body)

    def request_once(self, subject: str, body: dict) -> dict:
        self.n += 1
        reply = f"{self.inbox}.{self.n}"
        data = json.dumps(body).encode()
        self.s.sendall(f"PUB {subject} {reply} {len(data)}\r\n".encode() + data + b"\r\n")
        while True:
            line = self.f.readline().decode().strip()
            if line == "PING":
                self.s.sendall(b"PONG\r\n")
                continue
            if line.startswith("-ERR"):
                raise RuntimeError(line)
            parts = line.split()
            if parts[:1] == ["MSG"]:
                payload = self.f.read(int(parts[-1]) + 2)[:-2]
            elif parts[:1] == ["HMSG"]:
                payload = self.f.read(int(parts[-1]) + 2)[:-2][int(parts[-2]):]
            else:
                continue
            if parts[1] == reply:
                return json.loads(payload or b"{}")


def stream_limit(spec: dict) -> dict:
    """The store-full fault: the stream's config with max_bytes at what it holds now and discard
    `new`, so JetStream refuses every publish to it as a full store does ("maximum bytes
    exceeded"); or, with `config`, that config put back. Answers the config it replaced."""
    js = JsSession(spec)
    request, name = js.request, spec["stream"]
    try:
        info = request(f"$JS.API.STREAM.INFO.{name}", {})
        if "error" in info:
            return {"ok": False, "detail": str(info["error"])}
        before = info["config"]
        config = spec.get("config") or {**before, "max_bytes": max(1, info["state"]["bytes"]), "discard": "new"}
        r = request(f"$JS.API.STREAM.UPDATE.{name}", config)
        if "error" in r:
            return {"ok": False, "detail": f"STREAM.UPDATE: {r['error']}"}
        return {"ok": True, "replaced": before, "bytes": info["state"]["bytes"]}
    finally:
        js.close()


def stream(spec: dict) -> dict:
    """Messages `first`.. of a stream, each as {seq, subject, msg_id, data}, through the
    JetStream API as an operator user."""
    js = JsSession(spec)
    request, name = js.request, spec["stream"]
    info = request(f"$JS.API.STREAM.INFO.{name}", {})
    if "error" in info:
        js.close()
        return {"ok": False, "detail": str(info["error"])}
    state = info["state"]
    msgs, retried = [], 0
    for seq in range(max(spec.get("first", 1), state["first_seq"]), state["last_seq"] + 1):
        # An error other than "no message found" (a deleted one) is asked again: right after a
        # fault the leader may still be moving, and a message skipped here would read as lost.
        for attempt in range(10):
            r = request(f"$JS.API.STREAM.MSG.GET.{name}", {"seq": seq})
            if "message" in r or (r.get("error") or {}).get("err_code") == 10037:
                break
            retried += 1
            time.sleep(0.5)
        else:
            js.close()
            return {"ok": False, "detail": f"{name} seq {seq}: {r.get('error')}"}
        m = r.get("message")
        if not m:
            continue  # deleted
        headers = base64.b64decode(m.get("hdrs") or "").decode(errors="replace")
        msg_id = next((ln.split(":", 1)[1].strip() for ln in headers.splitlines()
                       if ln.lower().startswith("nats-msg-id:")), None)  # fmt: skip
        msgs.append({"seq": seq, "subject": m["subject"], "msg_id": msg_id,
                     "data": base64.b64decode(m.get("data") or "").decode(errors="replace")})  # fmt: skip
    js.close()
    cluster = info.get("cluster") or {}
    return {"ok": True, "last_seq": state["last_seq"], "messages": msgs, "retried": retried, "leader": cluster.get("leader"),
            "replicas": [r.get("name") for r in cluster.get("replicas") or []]}  # fmt: skip
