"""Shared test set-up: a repository-local kernel cache, CUDA simulation, hypothesis profile."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# Kernels compiled by the tests go to the repository's (git-ignored) cache, not the user's:
# a second run reuses them, `make clean` removes them. Set before gradjit builds its cache.
os.environ.setdefault("GRADJIT_CACHE_DIR", os.path.join(REPO, ".gradjit-cache"))
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# Kernels answer every call unless a test turns tiered execution on (tests/test_tiered.py):
# compile counts and hot-path checks assume a compiled kernel from the first call.
os.environ.setdefault("GRADJIT_TIERED", "0")

import pytest
from hypothesis import HealthCheck, Phase, settings

# Each new signature costs a numba compile: keep example counts modest, no deadline (the
# first example of a signature compiles), and the same examples on every run.
settings.register_profile(
    "gradjit",
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    # no shrinking: a smaller failing example usually means new signatures, each a compile
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gradjit"))



@pytest.fixture(scope="module")
def module_cache_dir(tmp_path_factory):
    """A fresh disk-cache directory for one test module (its compile counts are its own)."""
    from gradjit.runtime import state
    mp = pytest.MonkeyPatch()
    mp.setenv("GRADJIT_CACHE_DIR", str(tmp_path_factory.mktemp("gradjit-cache")))
    state.reset_disk_cache()
    yield
    mp.undo()
    state.reset_disk_cache()
