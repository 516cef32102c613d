#!/usr/bin/env bash
# Runs the benchmarks (release build) against the local infrastructure; each prints JSON.
#   scripts/bench.sh            all benchmarks
#   CIM_BENCH_SECONDS=10 ...    seconds per measured point
#   CIM_BENCH_DOC_BYTES=...     size of the document bench's transfers (default 1 GiB)
#   CIM_BENCH_RESTATE=0         the workflow bench without its peer (Restate, fetched from npm
#                               by scripts/lib/restate.sh and built from bench/restate-peer)
#   CIM_BENCH_WEBHOOK_EVENTS=...  events per burst of the webhook bench (default 2,000)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/infra.sh up >&2
export CIM_TEST_DATABASE_URL="${CIM_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
export CIM_TEST_NATS_URL="${CIM_TEST_NATS_URL:-nats://127.0.0.1:4222}"
cargo bench --locked -p cim-eventstore --bench eventstore
cargo bench --locked -p cim-graph --bench graph
cargo bench --locked -p cim-gateway --bench gateway
cargo bench --locked -p cim-document --bench document
cargo bench --locked -p cim-agent --bench agent
cargo bench --locked -p cim-workflow --bench workflow
cargo bench --locked -p cim-webhook --bench webhook
# Websocket fan-out against nats-server's own websocket listener, same load, same run.
CIM_BENCH_PEER=nats cargo bench --locked -p cim-websocket --bench websocket
# The idle-memory bench starts the service binaries of the same profile.
cargo build --locked --release --bins
cargo bench --locked -p cim --bench idle
