# Sourced by the other scripts: installs what a fresh machine lacks and points cargo
# at a build cache outside the checkout (RocksDB's C++ takes minutes to build).
set -euo pipefail
if ! dpkg -s libclang-dev >/dev/null 2>&1; then
    echo "installing libclang-dev (needed to build RocksDB's bindings)" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libclang-dev >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/junokv/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
