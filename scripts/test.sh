#!/usr/bin/env bash
# The CIM test command: brings up the local services, then runs
#   cargo fmt --all --check
#   cargo clippy --workspace --all-targets --locked -- -D warnings
#   cargo test --workspace --locked --no-fail-fast [extra args passed to this script]
# Exits with the exit code of the first step that fails. The test step runs every test binary
# even after one fails (--no-fail-fast), so one run reports every failure; it still fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
START=$SECONDS
STEP=0
TOTAL=12

header() {
    STEP=$((STEP + 1))
    printf '\n==> test.sh [%d/%d] %s\n' "$STEP" "$TOTAL" "$*"
}

fail() { # exit-code step-name [message]
    local rc=$1 name=$2
    if [ -n "${3:-}" ]; then
        printf 'test.sh: %s\n' "$3" >&2
    fi
    printf '\ntest.sh: FAILED at step %d/%d (%s) with exit code %d after %ds\n' \
        "$STEP" "$TOTAL" "$name" "$rc" "$((SECONDS - START))"
    exit "$rc"
}

run() { # step-name command...
    local name=$1 rc=0
    shift
    "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        fail "$rc" "$name"
    fi
}

header "repository root: $ROOT"
cd "$ROOT" || fail 1 "cd" "cannot cd to $ROOT"

header "infrastructure: scripts/infra.sh up"
run "infra" bash scripts/infra.sh up

header "toolchain"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    fail 127 "toolchain" "cargo not found on PATH. Install the Rust toolchain with rustup (https://rustup.rs), with the rustfmt and clippy components; this script does not fetch toolchains."
fi
cargo --version
for component in fmt clippy; do
    if ! cargo "$component" --version >/dev/null 2>&1; then
        fail 127 "toolchain" "'cargo $component' is not available: run 'rustup component add $([ "$component" = fmt ] && echo rustfmt || echo clippy)'"
    fi
done
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    export CARGO_TARGET_DIR
fi
export CIM_TEST_DATABASE_URL="${CIM_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:${CIM_INFRA_PG_PORT:-5432}/postgres}"
export CIM_TEST_NATS_URL="${CIM_TEST_NATS_URL:-nats://127.0.0.1:${CIM_INFRA_NATS_PORT:-4222}}"
export CIM_TEST_REDIS_URL="${CIM_TEST_REDIS_URL:-redis://127.0.0.1:${CIM_INFRA_REDIS_PORT:-6379}}"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    printf 'CARGO_TARGET_DIR=%s\n' "$CARGO_TARGET_DIR"
else
    printf 'CARGO_TARGET_DIR not set (cargo default: %s/target)\n' "$ROOT"
fi
printf 'CIM_TEST_DATABASE_URL=%s\n' "$CIM_TEST_DATABASE_URL"
printf 'CIM_TEST_NATS_URL=%s\n' "$CIM_TEST_NATS_URL"
printf 'CIM_TEST_REDIS_URL=%s\n' "$CIM_TEST_REDIS_URL"

header "python test client (tests/python/requirements.txt)"
# An independent gRPC client (grpcio + reflection) drives the services in some tests.
PY="${CIM_TEST_PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
    run "python" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null'
fi
# Every pinned requirement, checked by pip itself (a list of modules here went stale when the
# requirements grew); quick when all are there.
if ! "$PY" -m pip install -q -r tests/python/requirements.txt >/dev/null 2>&1; then
    # Debian's own python refuses system-wide pip installs (PEP 668): use a virtualenv.
    VENV=/var/tmp/cim-pyenv
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        run "python" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null'
        run "python" "$PY" -m venv "$VENV"
    fi
    run "python" "$VENV/bin/pip" install -q -r tests/python/requirements.txt
    PY="$VENV/bin/python"
fi
export CIM_TEST_PYTHON="$PY"
# grpcurl comes in a wheel: its launcher sits beside the interpreter (not beside a pyenv shim).
CIM_TEST_GRPCURL="$("$PY" -c 'import os, sys; print(os.path.join(os.path.dirname(sys.executable), "grpcurl"))')"
export CIM_TEST_GRPCURL
"$PY" -c 'import grpc, grpc_status, google.protobuf, schemathesis, moto.server, multiformats, blake3, selenium; print("python test tools ready:", grpc.__version__, google.protobuf.__version__, schemathesis.__version__, moto.__version__, selenium.__version__)'
"$CIM_TEST_GRPCURL" -version
# The web console's browser test (crates/gateway/tests/console.rs): Debian's headless Chromium
# and its matching ChromeDriver, from the same package source so their versions agree.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    run "chromium" bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null'
fi
CIM_TEST_CHROMIUM="${CIM_TEST_CHROMIUM:-$(command -v chromium)}"
CIM_TEST_CHROMEDRIVER="${CIM_TEST_CHROMEDRIVER:-$(command -v chromedriver)}"
export CIM_TEST_CHROMIUM CIM_TEST_CHROMEDRIVER
"$CIM_TEST_CHROMEDRIVER" --version

header "deployment files: scripts/check-deploy.sh"
run "check-deploy" bash scripts/check-deploy.sh

header "deployment rehearsal: scripts/rehearse.sh"
run "rehearse" bash scripts/rehearse.sh

header "scaling and faults (bounded): scripts/faults.sh"
run "faults" bash scripts/faults.sh

header "live metrics: scripts/check-live-metrics.sh"
run "check-live-metrics" bash scripts/check-live-metrics.sh

header "alerts reach a person: scripts/check-alerts.sh"
run "check-alerts" bash scripts/check-alerts.sh

header "cargo fmt --all --check"
run "cargo fmt" cargo fmt --all --check

header "cargo clippy --workspace --all-targets --locked -- -D warnings"
run "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings

header "cargo test --workspace --locked --no-fail-fast${*:+ $*}"
run "cargo test" cargo test --workspace --locked --no-fail-fast "$@"

printf '\ntest.sh: OK - all steps succeeded (infra, fmt, clippy, test) in %ds\n' "$((SECONDS - START))"
