#!/bin/sh
# Container healthcheck: each argument is service:default-admin-port. The port follows
# CIM_<SERVICE>_ADMIN_ADDR when set, so an image run on another port stays healthy. With several
# services (the monolith image), a port that refuses connections is a service not started
# (--services chose others) and is skipped, but at least one must be ready.
set -u
ready=0
for spec in "$@"; do
    service=${spec%%:*}
    var="CIM_$(printf '%s' "$service" | tr '[:lower:]' '[:upper:]')_ADMIN_ADDR"
    addr=$(printenv "$var" || true)
    port=${addr##*:}
    [ -n "$port" ] || port=${spec##*:}
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://127.0.0.1:$port/health/ready")
    rc=$?
    if [ "$rc" -eq 7 ] && [ "$#" -gt 1 ]; then
        continue
    fi
    if [ "$code" != 200 ]; then
        echo "$service: GET /health/ready on port $port: HTTP $code (curl exit $rc)"
        exit 1
    fi
    ready=$((ready + 1))
done
if [ "$ready" -eq 0 ]; then
    echo "no admin listener answered (tried: $*)"
    exit 1
fi
