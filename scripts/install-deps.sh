#!/usr/bin/env bash
# Installs everything hostcache needs to build, test and run its demo, from
# Debian's packages only. Idempotent: a second run installs nothing new.
#   scripts/install-deps.sh           build + test dependencies
#   scripts/install-deps.sh --bench   also the peers of the comparison benchmark
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libboost-dev libxxhash-dev libzstd-dev libmsgpack-cxx-dev libspdlog-dev libfmt-dev
  libbenchmark-dev libgtest-dev libgmock-dev
  nlohmann-json3-dev libcli11-dev
  clang libclang-rt-dev
  curl procps ccache gdb
  python3-dev pybind11-dev python3-pybind11 python3-django python3-pytest python3-pytest-django
  gunicorn python3-django-graphene
  redis-server libhiredis-dev
)
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(redis-server libhiredis-dev memcached libmemcached-dev liblmdb-dev gnuplot-nox wrk jq
    python3-diskcache python3-django-redis python3-pymemcache php-cli php-apcu)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO=sudo
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
