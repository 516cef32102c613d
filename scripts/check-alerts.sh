#!/usr/bin/env bash
# The alerting check (issue 24): NATS stopped under a running `cim serve`, and CIM's own alert
# (CimNatsUnreachable) must reach a webhook through a real Prometheus and Alertmanager within its
# `for:` plus the evaluation interval, with the shipped routes and inhibition rules, then resolve
# after NATS is back. tests/deploy/alerts.py does the work and says exactly what is checked; this
# script builds `cim` (honouring CARGO_TARGET_DIR) and finds the tools. About 2 minutes.
#
# Needs: cargo, python3 with PyYAML, psql and a Postgres (CIM_TEST_DATABASE_URL, default
# postgres://postgres:postgres@127.0.0.1:5432/postgres; a throwaway database is created and
# dropped), a nats-server binary (a private server on a free port; the shared one is not
# touched). Prometheus and Alertmanager: the installed ones, else the binaries of the Debian
# packages prometheus and prometheus-alertmanager, unpacked without installing them (Alertmanager's
# templates copied to /usr/share/prometheus/alertmanager, where Debian's build reads them: root
# the first time).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/debtool.sh disable=SC1091
. "$ROOT/scripts/lib/debtool.sh"
# shellcheck source=scripts/lib/venv.sh disable=SC1091
. "$ROOT/scripts/lib/venv.sh"
export DEBIAN_FRONTEND=noninteractive

log() { printf 'check-alerts: %s\n' "$*"; }
die() {
    log "$*"
    exit 2
}

cd "$ROOT"
PROMETHEUS="$(deb_tool prometheus prometheus usr/bin/prometheus)"
ALERTMANAGER="$(deb_tool prometheus-alertmanager prometheus-alertmanager usr/bin/prometheus-alertmanager)"
alertmanager_templates "$ALERTMANAGER"
PY="$(find_python)"
for tool in psql nats-server; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] || die "$tool not found (scripts/infra.sh up installs it)"
done
log "$("$PROMETHEUS" --version 2>&1 | head -n1); $("$ALERTMANAGER" --version 2>&1 | head -n1)"

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

"$PY" "$ROOT/tests/deploy/alerts.py" --cim "$BIN" --prometheus "$PROMETHEUS" --alertmanager "$ALERTMANAGER" &
HELPER=$!
rc=0
wait "$HELPER" || rc=$?
HELPER=""
exit "$rc"
