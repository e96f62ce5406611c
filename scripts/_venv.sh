# Sourced by scripts/test.sh and scripts/quickstart.sh (not run on its own).
# The caller has cd'ed to the repo root and runs under `set -euo pipefail`.

# Install Debian packages only when missing, and only as root with apt-get
# (elsewhere a missing package is reported and left to whoever needs it).
apt_install_if_missing() {
    local missing=() pkg
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
    # A package that cannot be had is not fatal: the tests that need it skip
    # with the reason (no browser, no sshfs), and the rest still run.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
        || echo "==> apt-get could not install ${missing[*]}; the tests that need them will skip" >&2
}

# Make sure .venv exists and holds queuectl (editable) plus the given extras
# (e.g. "test").
venv_setup() {
    local extras="${1:-}" spec="."
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x .venv/bin/python ]; then
        # Debian's own python3 has venv without ensurepip until python3-venv is installed.
        python3 -c 'import ensurepip' 2>/dev/null || apt_install_if_missing python3-venv
        echo "==> creating .venv" >&2
        python3 -m venv .venv
    fi
    echo "==> installing queuectl into .venv (pip install -e '$spec')" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
    # Byte-compile now: where PYTHONDONTWRITEBYTECODE is set nothing caches
    # bytecode, and every queuectl command would pay ~15 ms to recompile itself.
    .venv/bin/python -m compileall -q queuectl >/dev/null
}
