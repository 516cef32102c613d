# shellcheck shell=bash
# Sourced by scripts/check-deploy.sh, scripts/rehearse.sh, scripts/check-alerts.sh and
# scripts/check-live-metrics.sh, which define log and die (and apt_install, for ensure_venv): the
# PyPI tools they use live in one virtualenv, installed from one pinned list.

# Makes the virtualenv $1 hold the requirements file $2, reinstalling when the file changed or
# the check `python -c "$3"` (the imports the caller needs) fails.
ensure_venv() { # venv requirements check
    local venv=$1 req=$2 check=$3 lock
    # One installer at a time: a second run (a suite beside a check-deploy) waits instead of
    # finding a half-made venv.
    mkdir -p "$(dirname "$venv")"
    exec {lock}>"$venv.lock"
    flock "$lock"
    ensure_venv_locked "$venv" "$req" "$check"
    local status=$?
    exec {lock}>&-
    return $status
}

ensure_venv_locked() { # venv requirements check
    local venv=$1 req=$2 check=$3
    if cmp -s "$req" "$venv/.requirements.txt" 2>/dev/null && "$venv/bin/python" -c "$check" 2>/dev/null; then
        return
    fi
    log "installing the PyPI tools into $venv"
    # A venv whose interpreter went away (python upgraded or removed) is rebuilt.
    "$venv/bin/python" -c '' 2>/dev/null || rm -rf "$venv"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv" >/dev/null 2>&1 || {
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv" || die "python3 -m venv $venv failed"
        }
    fi
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" || die "pip install -r $req failed"
    cp "$req" "$venv/.requirements.txt"
}

# A python with PyYAML, for the checks that need only that: CIM_TEST_PYTHON, python3, or
# check-deploy's virtualenv.
find_python() {
    local py
    for py in "${CIM_TEST_PYTHON:-python3}" python3 /var/tmp/cim-deploy-venv/bin/python; do
        if "$py" -c 'import yaml' >/dev/null 2>&1; then
            printf '%s\n' "$py"
            return
        fi
    done
    die "no python3 with PyYAML (apt-get install python3-yaml, or run scripts/check-deploy.sh once for its venv)"
}
