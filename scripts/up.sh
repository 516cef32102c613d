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
export CIM_DATABASE_URL="${CIM_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/cim}"
echo "up: building the cim CLI"
cargo build --locked --quiet -p cim
CIM="${CARGO_TARGET_DIR:-$ROOT/target}/debug/cim"
echo "up: checking the installation"
"$CIM" doctor --before-start
export CIM_LOG_FORMAT="${CIM_LOG_FORMAT:-pretty}"
# A development-only signing secret, so the gateway accepts the tokens `cim token` prints.
export CIM_JWT_HS256_SECRET="${CIM_JWT_HS256_SECRET:-cim-local-development-secret-0123456789}"
echo "up: a bearer token for the API (admin, new tenant, 1 h):"
echo "    $("$CIM" token --roles admin)"
echo "up: starting CIM (Ctrl-C to stop); API http://127.0.0.1:8080/api/v1, docs http://127.0.0.1:8080/api/openapi.json"
exec "$CIM" serve --services "${CIM_SERVICES:-all}"
