#!/usr/bin/env python3
"""A webhook receiver for CIM's Alertmanager: prints each notification, one line per alert.

usage: receiver.py [--listen 127.0.0.1:9095]

Point a receiver of monitoring/alertmanager/alertmanager.yml at it (`url:
http://<this host>:9095/alerts`) and every notification Alertmanager sends arrives as a POST of
its webhook JSON (version 4). This one prints, per alert,

    FIRING   CimNatsUnreachable critical graph at 10.0.4.12:9102 cannot reach NATS  runbook: docs/runbooks/CimNatsUnreachable.md
    RESOLVED CimNatsUnreachable critical graph at 10.0.4.12:9102 cannot reach NATS  runbook: docs/runbooks/CimNatsUnreachable.md

and answers 200 (anything else makes Alertmanager retry). Copy it as the start of a bridge to your
chat or paging tool: `on_notification` gets the parsed JSON. Standard library only;
tests/deploy/alerts.py runs this very receiver to prove that CIM's alerts reach it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Notification = dict
Handler = Callable[[Notification], None]


def describe(notification: Notification) -> list[str]:
    """One line per alert of a notification: state, name, severity, summary, runbook."""
    lines = []
    for alert in notification.get("alerts", []):
        labels, notes = alert.get("labels", {}), alert.get("annotations", {})
        lines.append(
            f"{alert.get('status', '?').upper():8} {labels.get('alertname', '?')} {labels.get('severity', '-')} "
            f"{notes.get('summary', '')}  runbook: {notes.get('runbook_url', '(none)')}"
        )
    return lines


def make_server(listen: tuple[str, int], on_notification: Handler) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that hands every POSTed notification to on_notification."""

    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the http.server API)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                notification = json.loads(body)
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            notification["_path"] = self.path
            on_notification(notification)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args) -> None:  # one line per alert instead of access logs
            pass

    return ThreadingHTTPServer(listen, Receive)


def serve_in_background(on_notification: Handler, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, str]:
    """Starts a receiver on a free port of host; returns it and its URL (for a test)."""
    server = make_server((host, 0), on_notification)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/alerts"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:9095", help="host:port (default 127.0.0.1:9095)")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")

    def show(notification: Notification) -> None:
        for line in describe(notification):
            print(line, flush=True)

    server = make_server((host or "0.0.0.0", int(port)), show)
    print(f"receiving Alertmanager webhooks on http://{args.listen}/alerts", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
