# shellcheck shell=bash
# Sourced by scripts/check-live-metrics.sh, check-alerts.sh and rehearse.sh, which define die: a
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

# Debian's Alertmanager reads its notification templates from /usr/share/prometheus/alertmanager
# (a Debian patch; upstream's binary embeds them) and refuses every configuration without them.
# An unpacked binary ($1) gets the package's templates there, as installing the package would put
# them, without its service. Needs root the first time.
alertmanager_templates() { # alertmanager-binary
    local share=/usr/share/prometheus/alertmanager from
    from="$(dirname "$1")/../share/prometheus/alertmanager"
    [ -f "$share/default.tmpl" ] && return
    [ -f "$from/default.tmpl" ] || die "no $share/default.tmpl, and $1 is not an unpacked Debian package beside its templates"
    if ! { mkdir -p "$share" && cp "$from"/*.tmpl "$share/"; }; then
        die "cannot copy Alertmanager's templates to $share (run as root once)"
    fi
}
