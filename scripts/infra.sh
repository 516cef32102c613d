#!/usr/bin/env bash
# Local test infrastructure for CIM: PostgreSQL, Redis and NATS (JetStream),
# all on loopback.
#
#   scripts/infra.sh [up]    detect each service; install (apt) and start the
#                            missing ones; make sure the test database URL
#                            works and that database `cim` exists
#   scripts/infra.sh status  one line per service; exits non-zero if any is down
#
# Safe to run repeatedly and from any directory. Ports can be overridden (e.g.
# to try the start path without touching the shared services):
#   CIM_INFRA_PG_PORT (5432)  CIM_INFRA_REDIS_PORT (6379)  CIM_INFRA_NATS_PORT (4222)
#   CIM_INFRA_WAIT_SECS (30)  how long to wait for a started service to answer
#   CIM_INFRA_STATE_DIR (/var/tmp/cim-infra)  data/log/pid files of instances
#                            started on non-default ports

# The bash -c / sh -c snippets below take their arguments as $1.. on purpose.
# shellcheck disable=SC2016
set -euo pipefail

HOST=127.0.0.1
PG_PORT="${CIM_INFRA_PG_PORT:-5432}"
REDIS_PORT="${CIM_INFRA_REDIS_PORT:-6379}"
NATS_PORT="${CIM_INFRA_NATS_PORT:-4222}"
WAIT_SECS="${CIM_INFRA_WAIT_SECS:-30}"
STATE_DIR="${CIM_INFRA_STATE_DIR:-/var/tmp/cim-infra}"

PG_URL="postgres://postgres:postgres@${HOST}:${PG_PORT}/postgres"
REDIS_URL="redis://${HOST}:${REDIS_PORT}"
NATS_URL="nats://${HOST}:${NATS_PORT}"

APT_UPDATED=0
INSTALLED_THIS_RUN=" "

log() { printf 'infra: %s\n' "$*"; }
warn() { printf 'infra: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'infra: ERROR: %s\n' "$*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

systemd_running() { [ -d /run/systemd/system ]; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "root privileges are needed for: $* -- run this script as root or install sudo"
    fi
}

# Run a command as the OS user `postgres` (peer auth on the local socket).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then
        (cd / && "$@")
    elif [ "$(id -u)" -eq 0 ]; then
        if have runuser; then
            (cd / && runuser -u postgres -- "$@")
        else
            (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
        fi
    elif have sudo; then
        (cd / && sudo -u postgres -- "$@")
    else
        die "cannot run commands as the 'postgres' OS user: run this script as root or install sudo"
    fi
}

# Run a command quietly; show its output only if it fails.
quiet() {
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf '%s\n' "$out" >&2
    fi
    return "$rc"
}

apt_install() {
    have apt-get || die "cannot install $* : apt-get not found (install it by hand, or use a Debian/Ubuntu machine)"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt: apt-get update"
        quiet as_root apt-get update -q || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt: installing $*"
    quiet as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@" ||
        die "apt-get install $* failed"
    INSTALLED_THIS_RUN="${INSTALLED_THIS_RUN}$* "
}

installed_this_run() { [[ $INSTALLED_THIS_RUN == *" $1 "* ]]; }

# Is a TCP port on loopback accepting connections?
tcp_open() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$1" >/dev/null 2>&1
}

port_closed() { ! tcp_open "$1"; }

# Wait until "$@" succeeds, up to WAIT_SECS seconds.
wait_for() {
    local i
    for ((i = 0; i < WAIT_SECS; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 1
    done
    "$@"
}

# ---------------------------------------------------------------- PostgreSQL

pg_answers() {
    tcp_open "$PG_PORT" || return 1
    if have pg_isready; then
        pg_isready -q -h "$HOST" -p "$PG_PORT" -t 3 >/dev/null 2>&1 || return 1
    fi
    return 0
}

pg_server_installed() {
    have pg_ctlcluster || return 1
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

pg_url_works() {
    PGCONNECT_TIMEOUT=5 psql "$PG_URL" -XAtqc 'select 1' >/dev/null 2>&1
}

# psql via the local socket as the postgres superuser.
pg_local_psql() {
    as_postgres env -u PGHOST -u PGHOSTADDR -u PGSERVICE \
        psql -X -U postgres -p "$PG_PORT" -d postgres "$@"
}

start_postgres() {
    local ver="" name="" line out
    # A cluster configured for this port?
    line=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p { print $1, $2; exit }') || true
    if [ -n "$line" ]; then
        read -r ver name <<<"$line"
    else
        ver=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
            awk -F/ '{ print $5 }' | sort -V | tail -n1)
        [ -n "$ver" ] || die "postgres: no PostgreSQL server version found under /usr/lib/postgresql"
        if [ "$PG_PORT" = 5432 ] && [ ! -e "/etc/postgresql/$ver/main" ]; then
            name=main
        else
            name="cim$PG_PORT"
        fi
        log "postgres: no cluster on port $PG_PORT; creating cluster $ver/$name (pg_createcluster)"
        quiet as_root pg_createcluster "$ver" "$name" -p "$PG_PORT" ||
            die "postgres: pg_createcluster $ver $name -p $PG_PORT failed"
    fi
    if systemd_running; then
        log "postgres: starting cluster $ver/$name (systemctl start postgresql@$ver-$name)"
        out=$(as_root systemctl start "postgresql@$ver-$name" 2>&1) ||
            warn "postgres: systemctl start failed: $out"
    else
        log "postgres: starting cluster $ver/$name (pg_ctlcluster --skip-systemctl-redirect $ver $name start)"
        out=$(as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start 2>&1) ||
            warn "postgres: pg_ctlcluster start failed: $out"
    fi
    PG_LOG="/var/log/postgresql/postgresql-$ver-$name.log"
}

ensure_postgres() {
    PG_LOG=/var/log/postgresql
    if pg_answers; then
        log "postgres: already running on $HOST:$PG_PORT"
    elif tcp_open "$PG_PORT"; then
        log "postgres: port $PG_PORT is open but not ready yet; waiting up to ${WAIT_SECS}s"
        wait_for pg_answers ||
            die "postgres: something listens on $HOST:$PG_PORT but pg_isready never reported it ready"
        log "postgres: ready on $HOST:$PG_PORT"
    else
        if ! pg_server_installed; then
            log "postgres: server not installed"
            apt_install postgresql
        fi
        if pg_answers; then
            log "postgres: started by the package install, running on $HOST:$PG_PORT"
        else
            start_postgres
            log "postgres: waiting up to ${WAIT_SECS}s for $HOST:$PG_PORT"
            wait_for pg_answers ||
                die "postgres: did not answer on $HOST:$PG_PORT after ${WAIT_SECS}s (see $PG_LOG)"
            log "postgres: started, running on $HOST:$PG_PORT"
        fi
    fi

    if ! have psql; then
        log "postgres: psql not found"
        apt_install postgresql-client
    fi

    if pg_url_works; then
        log "postgres: $PG_URL accepted"
    else
        log "postgres: $PG_URL rejected; setting the password of role postgres through the local socket"
        quiet pg_local_psql -qc "ALTER ROLE postgres PASSWORD 'postgres'" ||
            die "postgres: could not set the password of role postgres via the local socket"
        pg_url_works ||
            die "postgres: $PG_URL is still rejected after setting the password (check pg_hba.conf for $HOST)"
        log "postgres: $PG_URL accepted"
    fi

    local exists
    exists=$(PGCONNECT_TIMEOUT=5 psql "$PG_URL" -XAtqc "select 1 from pg_database where datname = 'cim'") ||
        die "postgres: could not list databases"
    if [ "$exists" = 1 ]; then
        log "postgres: database cim already exists"
    else
        log "postgres: creating database cim"
        if ! quiet psql "$PG_URL" -Xqc 'CREATE DATABASE cim'; then
            # Lost a race with a concurrent run?
            exists=$(psql "$PG_URL" -XAtqc "select 1 from pg_database where datname = 'cim'") || true
            [ "$exists" = 1 ] || die "postgres: CREATE DATABASE cim failed"
        fi
    fi
}

# --------------------------------------------------------------------- Redis

redis_answers() {
    tcp_open "$REDIS_PORT" || return 1
    local reply
    if have redis-cli; then
        reply=$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) || return 1
    else
        reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "PING\r\n" >&3
            IFS= read -r -t 2 l <&3 || exit 1
            printf "%s" "$l"' _ "$HOST" "$REDIS_PORT" 2>/dev/null) || return 1
    fi
    [[ $reply == *PONG* ]]
}

start_redis() {
    if [ "$REDIS_PORT" = 6379 ] && systemd_running; then
        log "redis: starting (systemctl start redis-server)"
        as_root systemctl start redis-server || warn "redis: systemctl start redis-server failed"
        REDIS_LOG=/var/log/redis
        return 0
    fi
    local dir logfile
    local -a extra=()
    if [ "$REDIS_PORT" = 6379 ]; then
        dir=/var/lib/redis
        logfile=/var/log/redis/ci.log
        as_root mkdir -p /var/lib/redis /var/log/redis
    else
        dir="$STATE_DIR/redis-$REDIS_PORT"
        logfile="$dir/redis.log"
        extra=(--pidfile "$dir/redis.pid")
        as_root mkdir -p "$dir"
    fi
    REDIS_LOG="$logfile"
    log "redis: starting redis-server --daemonize yes --bind 127.0.0.1 -::1 --port $REDIS_PORT (dir $dir, log $logfile)"
    as_root redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$logfile" "${extra[@]}" ||
        warn "redis: redis-server exited with an error"
    if [ "${#extra[@]}" -gt 0 ]; then
        log "redis: pid file $dir/redis.pid (stop it with: kill \$(cat $dir/redis.pid))"
    fi
}

ensure_redis() {
    REDIS_LOG=/var/log/redis
    if redis_answers; then
        log "redis: already running on $HOST:$REDIS_PORT"
        return 0
    fi
    if tcp_open "$REDIS_PORT"; then
        log "redis: port $REDIS_PORT is open but PING got no PONG; waiting up to ${WAIT_SECS}s"
        wait_for redis_answers ||
            die "redis: something listens on $HOST:$REDIS_PORT but does not answer PING with PONG"
        log "redis: ready on $HOST:$REDIS_PORT"
        return 0
    fi
    if ! have redis-server; then
        log "redis: server not installed"
        apt_install redis-server
    fi
    if redis_answers; then
        log "redis: started by the package install, running on $HOST:$REDIS_PORT"
        return 0
    fi
    start_redis
    log "redis: waiting up to ${WAIT_SECS}s for $HOST:$REDIS_PORT"
    wait_for redis_answers ||
        die "redis: did not answer on $HOST:$REDIS_PORT after ${WAIT_SECS}s (see $REDIS_LOG)"
    log "redis: started, running on $HOST:$REDIS_PORT"
}

# ---------------------------------------------------------------------- NATS

# Prints the server's INFO line (it sends one to every new connection).
nats_info() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 1
        IFS= read -r -t 2 l <&3 || exit 1
        printf "%s\n" "$l"' _ "$HOST" "$NATS_PORT" 2>/dev/null
}

nats_answers() {
    local info
    info=$(nats_info) || return 1
    [[ $info == INFO* ]]
}

nats_has_jetstream() {
    local info
    info=$(nats_info) || return 1
    [[ $info == *'"jetstream":true'* ]]
}

nats_bin() {
    if have nats-server; then
        command -v nats-server
    elif [ -x /usr/sbin/nats-server ]; then
        echo /usr/sbin/nats-server
    else
        return 1
    fi
}

start_nats() {
    local bin store logfile pidfile
    bin=$(nats_bin)
    if [ "$NATS_PORT" = 4222 ]; then
        store=/var/lib/nats-server
        logfile=/var/log/nats-server.log
        pidfile=/run/cim-nats-server.pid
    else
        store="$STATE_DIR/nats-$NATS_PORT/store"
        logfile="$STATE_DIR/nats-$NATS_PORT/nats-server.log"
        pidfile="$STATE_DIR/nats-$NATS_PORT/nats-server.pid"
    fi
    NATS_LOG="$logfile"
    as_root mkdir -p "$store" "$(dirname "$logfile")" "$(dirname "$pidfile")"
    log "nats: starting $bin -a $HOST -p $NATS_PORT -js -sd $store -l $logfile"
    if have start-stop-daemon; then
        # The pid file keeps start-stop-daemon from mistaking a nats-server on
        # another port for this one.
        as_root start-stop-daemon --start --oknodo --background \
            --make-pidfile --pidfile "$pidfile" --exec "$bin" -- \
            -a "$HOST" -p "$NATS_PORT" -js -sd "$store" -l "$logfile" ||
            warn "nats: start-stop-daemon failed"
    else
        as_root sh -c 'nohup "$1" -a "$2" -p "$3" -js -sd "$4" -l "$5" </dev/null >/dev/null 2>&1 &
            echo $! >"$6"' _ "$bin" "$HOST" "$NATS_PORT" "$store" "$logfile" "$pidfile" ||
            warn "nats: could not start nats-server"
    fi
    if [ "$NATS_PORT" != 4222 ]; then
        log "nats: pid file $pidfile (stop it with: kill \$(cat $pidfile))"
    fi
}

ensure_nats() {
    NATS_LOG=/var/log/nats-server.log
    if nats_answers; then
        log "nats: already running on $HOST:$NATS_PORT"
    elif tcp_open "$NATS_PORT"; then
        log "nats: port $NATS_PORT is open but sent no INFO; waiting up to ${WAIT_SECS}s"
        wait_for nats_answers ||
            die "nats: something listens on $HOST:$NATS_PORT but it does not speak the NATS protocol"
        log "nats: ready on $HOST:$NATS_PORT"
    else
        if ! nats_bin >/dev/null; then
            log "nats: server not installed"
            apt_install nats-server
        fi
        # On systemd the package starts its own unit, which has no JetStream:
        # replace it with one started with -js, as we just installed it.
        if nats_answers && ! nats_has_jetstream && installed_this_run nats-server &&
            systemd_running && [ "$NATS_PORT" = 4222 ]; then
            log "nats: stopping the packaged nats-server.service (it runs without JetStream)"
            as_root systemctl stop nats-server || warn "nats: systemctl stop nats-server failed"
            wait_for port_closed "$NATS_PORT" || true
        fi
        if nats_answers; then
            log "nats: started by the package install, running on $HOST:$NATS_PORT"
        else
            start_nats
            log "nats: waiting up to ${WAIT_SECS}s for $HOST:$NATS_PORT"
            wait_for nats_answers ||
                die "nats: did not answer on $HOST:$NATS_PORT after ${WAIT_SECS}s (see $NATS_LOG)"
            log "nats: started, running on $HOST:$NATS_PORT"
        fi
    fi
    # Tests that stop NATS start a private nats-server of their own: the binary must be here
    # even when the shared server runs elsewhere.
    if ! nats_bin >/dev/null; then
        log "nats: installing the nats-server binary for tests that run a private server"
        apt_install nats-server
        if have systemctl && [ "$(ps -o comm= -p 1 2>/dev/null)" = systemd ]; then
            as_root systemctl disable --now nats-server >/dev/null 2>&1 || true
        fi
    fi
    if nats_has_jetstream; then
        log "nats: JetStream enabled (reported in the server's INFO)"
    else
        warn "nats: the server on $HOST:$NATS_PORT does not report JetStream; tests that need it will fail (restart it with -js)"
    fi
}

# -------------------------------------------------------------------- status

cmd_status() {
    local down=0 js
    if pg_answers; then
        log "postgres: up ($HOST:$PG_PORT)"
    else
        log "postgres: down ($HOST:$PG_PORT)"
        down=1
    fi
    if redis_answers; then
        log "redis: up ($HOST:$REDIS_PORT)"
    else
        log "redis: down ($HOST:$REDIS_PORT)"
        down=1
    fi
    if nats_answers; then
        if nats_has_jetstream; then js="JetStream enabled"; else js="JetStream NOT enabled"; fi
        log "nats: up ($HOST:$NATS_PORT, $js)"
    else
        log "nats: down ($HOST:$NATS_PORT)"
        down=1
    fi
    return "$down"
}

cmd_up() {
    ensure_postgres
    ensure_redis
    ensure_nats
    log "all services up; the tests use:"
    printf 'CIM_TEST_DATABASE_URL=%s\n' "$PG_URL"
    printf 'CIM_TEST_NATS_URL=%s\n' "$NATS_URL"
    printf 'CIM_TEST_REDIS_URL=%s\n' "$REDIS_URL"
}

case "${1:-up}" in
    up) cmd_up ;;
    status) cmd_status ;;
    -h | --help | help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
        ;;
    *) die "unknown command '$1' (use: up | status)" ;;
esac
