"""One HTTP call for the deployment checks (rehearse.py, live_metrics.py): stdlib only, so it
also runs inside the rehearsal's network namespaces."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def call(method: str, url: str, body: object = None, headers: dict | None = None, timeout: float = 5.0):
    """(status, parsed JSON or text, None when empty). `body`: bytes or text as they are, anything
    else as JSON (Content-Type application/json unless `headers` names one)."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        if isinstance(body, bytes):
            data = body
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")
