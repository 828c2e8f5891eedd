#!/usr/bin/env bash
# Build the workbench images: images/build.sh [IMAGE...]   (default: all of them)
#
# Images: trainer-tensorflow trainer-pytorch trainer-mxnet tensorboard jupyter serving
# (jupyter and serving are built on trainer-tensorflow, which is built first when they are asked for).
# The build context is images/, with the workbench wheel built into images/dist/ from this checkout, and the
# lock files of requirements/ beside it (every pip install in the images is constrained by one).
#
# Settings (environment):
#   PREFIX      image name prefix, e.g. registry.example.com/team   (default: workbench)
#   TAG         image tag                                            (default: the package version)
#   BASE_IMAGE  base of the trainer and tensorboard images           (default: python:3.11-slim-bookworm)
#   DOCKER      docker client                                        (default: docker)
#   Anything after `--` goes to every `docker build`, e.g. -- --build-arg TF_PACKAGE="tensorflow[and-cuda]==2.21.0"
set -euo pipefail
cd "$(dirname "$0")"
root=..

names=() extra=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; extra=("$@"); break; fi
  names+=("$1"); shift
done
all=(trainer-tensorflow trainer-pytorch trainer-mxnet tensorboard jupyter serving)
[ ${#names[@]} -gt 0 ] || names=("${all[@]}")
for n in "${names[@]}"; do
  [ -f "$n/Dockerfile" ] || { echo "unknown image '$n'; images: ${all[*]}" >&2; exit 2; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml")
PREFIX=${PREFIX:-workbench} TAG=${TAG:-$version} DOCKER=${DOCKER:-docker}
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3

# Fixed timestamps make the wheel byte-identical while the code is: Docker's cache then holds.
rm -rf dist && SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800} \
  "$python" -m pip wheel -q --no-deps --no-build-isolation -w dist "$root" >/dev/null 2>&1
# The lock files every pip install in the images obeys (PIP_CONSTRAINT), as scripts/setup.sh's do.
cp "$root"/requirements/*lock.txt dist/

base_args=()
[ -n "${BASE_IMAGE:-}" ] && base_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
trainer="$PREFIX/trainer-tensorflow:$TAG"
build() {  # name
  local args=()
  case $1 in
    jupyter|serving) args=(--build-arg "TRAINER_IMAGE=$trainer") ;;
    *) args=("${base_args[@]}") ;;
  esac
  echo "building $PREFIX/$1:$TAG"
  "$DOCKER" build -f "$1/Dockerfile" -t "$PREFIX/$1:$TAG" "${args[@]}" "${extra[@]}" .
}

wanted=" ${names[*]} "
if [[ $wanted == *" jupyter "* || $wanted == *" serving "* ]] && [[ $wanted != *" trainer-tensorflow "* ]]; then
  names=(trainer-tensorflow "${names[@]}")
fi
for n in "${all[@]}"; do  # dependency order
  [[ " ${names[*]} " == *" $n "* ]] && build "$n"
done
echo "built: ${names[*]} ($PREFIX/...:$TAG)"
