# shellcheck shell=bash
# Sourced by scripts/check-live-metrics.sh and scripts/check-alerts.sh, which define die: a
# server's binary from its Debian package without installing the package (installing prometheus
# or prometheus-alertmanager starts their services), unpacked once into the cache check-deploy.sh
# and rehearse.sh unpack their tools into.

DEBTOOLS=/var/tmp/cim-deploy-tools

# Prints the path of COMMAND: the installed one, else PATH-IN-PACKAGE of Debian's PACKAGE,
# downloaded (apt-get update once if the package lists lack it) and unpacked on first use.
deb_tool() { # command package path-in-package
    local cmd=$1 pkg=$2 inside=$3 dir="$DEBTOOLS/debs" deb
    if command -v "$cmd" >/dev/null 2>&1; then
        command -v "$cmd"
        return
    fi
    if [ ! -x "$DEBTOOLS/$pkg/$inside" ]; then
        mkdir -p "$dir"
        deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
        if [ -z "$deb" ]; then
            (cd "$dir" && apt-get download "$pkg" >/dev/null 2>&1) || {
                apt-get update -qq >/dev/null || die "apt-get update failed"
                (cd "$dir" && apt-get download "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
            }
            deb="$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
        fi
        rm -rf "$DEBTOOLS/$pkg.tmp"
        dpkg-deb -x "$deb" "$DEBTOOLS/$pkg.tmp" || die "cannot unpack $deb"
        rm -rf "${DEBTOOLS:?}/$pkg" && mv "$DEBTOOLS/$pkg.tmp" "$DEBTOOLS/$pkg"
    fi
    printf '%s\n' "$DEBTOOLS/$pkg/$inside"
}
