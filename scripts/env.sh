# Sourced by the other scripts: installs what a fresh machine lacks and points cargo
# at a build cache outside the checkout (RocksDB's C++ takes minutes to build).
set -euo pipefail

# `apt_install PACKAGE...`: installs them from the distribution (as root, or by sudo).
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing $*" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev) # RocksDB's bindings
command -v protoc >/dev/null || missing+=(protobuf-compiler)     # etcd's client (gRPC)
command -v etcd >/dev/null || missing+=(etcd-server)             # the map source's tests
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/junokv/target}"
# No incremental compilation: CI builds each commit once, and its caches grew by
# gigabytes a day.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
