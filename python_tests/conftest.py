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
    settings.register_profile("default", max_examples=500, deadline=None)
    settings.register_profile("slow", max_examples=3000, deadline=None)
    settings.load_profile("slow" if config.getoption("--slow") else "default")


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
