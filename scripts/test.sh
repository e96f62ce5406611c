#!/usr/bin/env bash
# Set up everything on a fresh machine (Debian, Python >= 3.10) and run the whole
# test suite, slow tests included. CI runs exactly this (see .ci/run).
#
#     bash scripts/test.sh            # extra arguments go to pytest, e.g. -k enqueue
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

. scripts/_venv.sh   # defines apt_install_if_missing and venv_setup

# --- Debian packages the tests need, in one apt-get (one `apt-get update`):
#   chromium                 tests/test_browser.py drives it through Playwright (never
#                            `playwright install`: Debian's build is the browser)
#   openssh-server sshfs     tests/cluster.py: a loopback sshd and three sshfs mounts
#   glusterfs-server         tests/gluster.py: a one-brick GlusterFS volume (its own glusterd,
#   glusterfs-client         started by the fixture) mounted three times with the FUSE client
#   systemd                  `systemd-analyze verify` of the shipped units (tests/test_service.py)
#   prometheus               tests/test_prometheus.py: a real server scrapes `queuectl web` on
#   prometheus-node-exporter loopback, and the textfile through node_exporter; promtool checks
#                            contrib/prometheus/alerts.yml
#   jq                       the docs' examples use it (tests/test_docs.py runs them)
apt_install_if_missing chromium openssh-server sshfs systemd prometheus prometheus-node-exporter jq \
    glusterfs-server glusterfs-client

venv_setup test

exec .venv/bin/python -m pytest -q "$@"
