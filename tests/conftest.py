"""Fixtures for every test module come from support.py (the one home of shared helpers)."""

import pytest

from support import (age, bg, collect_lines, ls, poll, procs, read_job, run, run_proc,  # noqa: F401
                     spool_dir, start_proc)


@pytest.fixture(scope="session")
def gluster(tmp_path_factory):
    """Three mounts of one GlusterFS volume (tests/gluster.py), for the whole session: a volume takes ~2 s."""
    from cluster import Unavailable
    from gluster import GlusterCluster
    c = GlusterCluster(tmp_path_factory.mktemp("gluster"), 3)
    try:
        c.up()
    except Unavailable as e:
        pytest.skip(f"no GlusterFS cluster here: {e}")
    try:
        yield c
    finally:
        c.down()
