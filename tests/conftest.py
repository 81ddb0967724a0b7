"""Make the repository root importable (p3o_kernel_loader) and this folder too (reference); the Ray
environment fixture shared by the runner's tests."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for path in (HERE.parent, HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture
def ray_env():
    """Environment for Ray processes: a short temp dir (Unix socket paths are limited to ~100
    characters), no auth token written to the home folder."""
    tmp = tempfile.mkdtemp(prefix="rayt", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1")
    yield env
    subprocess.run(["rm", "-rf", tmp])
