"""One HTTP call for the deployment checks (rehearse.py, live_metrics.py): stdlib only, so it
also runs inside the rehearsal's network namespaces."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def call(method: str, url: str, body: object = None, headers: dict | None = None, timeout: float = 5.0):
    """(status, parsed JSON or text, None when empty). `body`: bytes or text as they are, anything
    else as JSON (Content-Type application/json unless `headers` names one)."""
    status, _, parsed = exchange(method, url, body, headers, timeout)
    return status, parsed


def exchange(method: str, url: str, body: object = None, headers: dict | None = None, timeout: float = 5.0):
    """As `call`, with the response's headers too (lower-case names): (status, headers, body)."""
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
            status, got, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, got, raw = e.code, e.headers, e.read()
    got = {k.lower(): v for k, v in (got or {}).items()}
    try:
        return status, got, json.loads(raw) if raw else None
    except ValueError:
        return status, got, raw.decode(errors="replace")
