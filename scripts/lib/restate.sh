#!/usr/bin/env bash
# The workflow benchmark's peer: prints the path of the Restate server binary, installing the
# npm package that ships it (the one per-platform binary package it pulls in) into a cache
# outside the repository the first time. crates/workflow/benches/workflow.rs runs this; a
# failure (no npm, no registry) makes the bench report the peer unavailable with this output.
#   CIM_PEERS_DIR   the cache (default /var/tmp/cim-peers)
set -euo pipefail

RESTATE_NPM_VERSION=1.7.12

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) platform=linux-x64 ;;
    Linux-aarch64) platform=linux-arm64 ;;
    Darwin-x86_64) platform=darwin-x64 ;;
    Darwin-arm64) platform=darwin-arm64 ;;
    *) echo "restate-server $RESTATE_NPM_VERSION: no npm build for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac

dir="${CIM_PEERS_DIR:-/var/tmp/cim-peers}/restate-$RESTATE_NPM_VERSION"
bin="$dir/node_modules/@restatedev/restate-server-$platform/bin/restate-server"
if [ ! -x "$bin" ]; then
    command -v npm >/dev/null 2>&1 || { echo "npm is not installed (apt-get install npm)" >&2; exit 1; }
    mkdir -p "$dir"
    echo "installing @restatedev/restate-server@$RESTATE_NPM_VERSION into $dir" >&2
    # --ignore-scripts and SCARF_ANALYTICS=false: the package's dependency @scarf/scarf would
    # report the install to its vendor; nothing else runs at install time.
    (cd "$dir" && SCARF_ANALYTICS=false npm install --silent --no-audit --no-fund --ignore-scripts \
        --no-save "@restatedev/restate-server@$RESTATE_NPM_VERSION") >&2
fi
[ -x "$bin" ] || { echo "npm installed no $bin" >&2; exit 1; }
"$bin" --version >&2
echo "$bin"
