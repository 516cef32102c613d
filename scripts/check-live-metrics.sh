#!/usr/bin/env bash
# The live metrics check (issue 7): the monolith under a short load, scraped every second by a
# real Prometheus, and every PromQL expression of the dashboards and alert rules must return data.
# tests/deploy/live_metrics.py does the work and says exactly what is checked and how; this script
# builds `cim` (honouring CARGO_TARGET_DIR) and finds the tools.
#
# Needs: cargo, python3 with PyYAML, psql and a Postgres (CIM_TEST_DATABASE_URL, default
# postgres://postgres:postgres@127.0.0.1:5432/postgres; a throwaway database is created and
# dropped), nats-server and redis-server binaries (private instances on free ports; the shared
# servers are not touched). Prometheus: the installed one, else the binary from the Debian package,
# unpacked without installing it (installing starts its service), cached like check-deploy's
# promtool in /var/tmp/cim-deploy-tools. The infrastructure exporters the same way, from Debian's
# prometheus-postgres-exporter, -redis-exporter, -node-exporter and -blackbox-exporter (run on
# free ports against the run's stores; tests/deploy/live_infra.py), and openssl for the HTTPS
# endpoint whose certificate the blackbox exporter probes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/debtool.sh disable=SC1091
. "$ROOT/scripts/lib/debtool.sh"
# shellcheck source=scripts/lib/venv.sh disable=SC1091
. "$ROOT/scripts/lib/venv.sh"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'check-live-metrics: %s\n' "$*"; }
die() {
    log "$*"
    exit 2
}

cd "$ROOT"
PROMETHEUS="$(deb_tool prometheus prometheus usr/bin/prometheus)"
for exporter in postgres redis node blackbox; do
    deb_tool "prometheus-$exporter-exporter" "prometheus-$exporter-exporter" "usr/bin/prometheus-$exporter-exporter" >/dev/null
done
PY="$(find_python)"
for tool in psql nats-server redis-server openssl; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] || die "$tool not found (scripts/infra.sh up installs it)"
done
log "$("$PROMETHEUS" --version 2>&1 | head -n1)"

log "cargo build --locked -p cim"
cargo build --locked -p cim --quiet
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/cim"
[ -x "$BIN" ] || die "no binary at $BIN"

# The helper removes everything it started on any exit; TERM reaches it from here because a
# background job of a non-interactive shell ignores SIGINT.
HELPER=""
# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
    if [ -n "$HELPER" ] && kill -0 "$HELPER" 2>/dev/null; then
        kill -TERM "$HELPER" 2>/dev/null || true
        wait "$HELPER" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

"$PY" "$ROOT/tests/deploy/live_metrics.py" --cim "$BIN" --prometheus "$PROMETHEUS" &
HELPER=$!
rc=0
wait "$HELPER" || rc=$?
HELPER=""
exit "$rc"
