# Sourced by scripts/test.sh and scripts/quickstart.sh (not run on its own).
# Makes sure .venv exists in the repo root and holds queuectl (editable) plus
# the extras named in QUEUECTL_EXTRAS (e.g. "test"). Expects the caller to have
# cd'ed to the repo root and to run under `set -euo pipefail`.

venv_setup() {
    local extras="${1:-}"
    local spec="."
    if [ -n "$extras" ]; then
        spec=".[$extras]"
    fi
    if [ ! -x .venv/bin/python ]; then
        echo "==> creating .venv" >&2
        python3 -m venv .venv
    fi
    echo "==> installing queuectl into .venv (pip install -e '$spec')" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
}
