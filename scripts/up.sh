#!/usr/bin/env bash
# Brings CIM up on this machine with local defaults.
# Today that is the infrastructure CIM needs (Postgres, NATS with JetStream, Redis) plus a
# `cim doctor` check of it; the services join as they land (see README).
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
echo "up: checking the installation"
exec "${CARGO_TARGET_DIR:-$ROOT/target}/debug/cim" doctor
