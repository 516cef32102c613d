#!/usr/bin/env bash
# Brings CIM up on this machine with local defaults: the infrastructure (Postgres, NATS with
# JetStream, Redis), a `cim doctor` check, then every service built so far in one process
# (`cim serve --services all`, the monolith). Ctrl-C stops it gracefully.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/infra.sh up
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
# Colours only on a terminal: `scripts/up.sh > up.log` gets plain text. The services check their
# own stdout too; NO_COLOR (https://no-color.org) turns colours off on a terminal as well.
if [ ! -t 1 ]; then
    export NO_COLOR=1 CARGO_TERM_COLOR=never
fi
export CIM_DATABASE_URL="${CIM_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/cim}"
echo "up: building the cim CLI"
cargo build --locked --quiet -p cim
CIM="${CARGO_TARGET_DIR:-$ROOT/target}/debug/cim"
echo "up: checking the installation"
"$CIM" doctor --before-start
export CIM_LOG_FORMAT="${CIM_LOG_FORMAT:-pretty}"
# The console is served over plain HTTP here, where a Secure session cookie may not be kept.
export CIM_GATEWAY_COOKIE_SECURE="${CIM_GATEWAY_COOKIE_SECURE:-false}"
# The console is served on 8080 and the websocket server on 8081: name it for the live feed.
export CIM_GATEWAY_CONSOLE_WEBSOCKET_URL="${CIM_GATEWAY_CONSOLE_WEBSOCKET_URL:-ws://localhost:8081/ws}"
# The operations page reads the websocket server's readiness at its admin listener.
export CIM_GATEWAY_WEBSOCKET_ADMIN_URL="${CIM_GATEWAY_WEBSOCKET_ADMIN_URL:-http://127.0.0.1:9101}"
# Bearer tokens: unless a secret or a public key is configured, this user's development signing
# secret, made once (random, mode 0600) in the data directory (CIM_DATA_DIR, else
# $XDG_DATA_HOME/cim or ~/.local/share/cim) and handed to the services here. `cim token` finds
# it there from any shell; the services themselves never read the file.
if [ -z "${CIM_JWT_HS256_SECRET:-}${CIM_JWT_HS256_SECRET_FILE:-}${CIM_JWT_PUBLIC_KEY_FILE:-}${CIM_JWT_JWKS_URL:-}" ]; then
    SECRET_FILE="$("$CIM" local-secret)"
    CIM_JWT_HS256_SECRET="$(cat "$SECRET_FILE")"
    export CIM_JWT_HS256_SECRET
    echo "up: development signing secret: $SECRET_FILE ('cim token' in another shell uses it)"
fi
# The operations view counts every tenant's traffic: it answers admins of the operator tenants
# only. Here a new one (a UUIDv7) unless named, and the printed admin token is of that tenant.
uuid7() {
    local ms hex r
    ms=$(date +%s%3N)
    hex=$(printf '%012x' "$ms")
    r=$(od -An -N10 -tx1 /dev/urandom | tr -d ' \n')
    printf '%s-%s-7%s-%x%s-%s\n' "${hex:0:8}" "${hex:8:4}" "${r:0:3}" $((8 + (0x${r:3:1} & 3))) "${r:4:3}" "${r:7:12}"
}
export CIM_GATEWAY_OPERATOR_TENANTS="${CIM_GATEWAY_OPERATOR_TENANTS:-$(uuid7)}"
if [ -n "${CIM_JWT_HS256_SECRET:-}" ]; then
    echo "up: a bearer token for the API (admin of the operator tenant, 1 h):"
    echo "    $("$CIM" token --roles admin --tenant "${CIM_GATEWAY_OPERATOR_TENANTS%%,*}")"
fi
echo "up: starting CIM (Ctrl-C to stop); API http://127.0.0.1:8080/api/v1, docs http://127.0.0.1:8080/api/openapi.json"
exec "$CIM" serve --services "${CIM_SERVICES:-all}"
