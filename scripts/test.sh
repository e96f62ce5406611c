#!/usr/bin/env bash
# Set up everything on a fresh machine (Debian, Python >= 3.10) and run the whole
# test suite, slow tests included. CI runs exactly this (see .ci/run).
#
#     bash scripts/test.sh            # extra arguments go to pytest, e.g. -k enqueue
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Install Debian packages that tests need, only when missing and only as root
# (elsewhere, a missing package is left to the tests to skip with a reason).
apt_install_if_missing() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "==> not installing ${missing[*]}: needs root and apt-get" >&2
        return 0
    fi
    echo "==> apt-get install ${missing[*]}" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# --- apt packages the tests need: none yet. Add them here, e.g.
# apt_install_if_missing util-linux

. scripts/_venv.sh
venv_setup test

exec .venv/bin/python -m pytest -q "$@"
