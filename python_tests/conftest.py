import pytest
import torch

import msmix_ext


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="run the long tests and the large hypothesis profile")


def pytest_configure(config):
    try:
        from hypothesis import settings
    except ImportError:
        return
    # CI: the same examples on every run (derandomize) and nothing remembered between
    # runs (no database), so a pytest run's result depends on the code alone.
    settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True, database=None)
    # --slow: new random examples every run, and a failing one printed for @reproduce_failure.
    settings.register_profile("slow", max_examples=3000, deadline=None, print_blob=True)
    settings.load_profile("slow" if config.getoption("--slow") else "ci")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="long test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _devices():
    devices = ["cpu"]
    if torch.cuda.is_available() and msmix_ext.CUDA_COMPILED:
        devices.append("cuda")
    return devices


DEVICES = _devices()
requires_extension = pytest.mark.skipif(not msmix_ext.HAS_EXTENSION, reason="compiled extension not built")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seeded_global_rng():
    """Every test starts from the same global torch RNG state, so a test that draws from it
    draws the same numbers whatever ran before it (and with -k, -x or a reordered suite)."""
    torch.manual_seed(0)
