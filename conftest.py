"""Repository-wide pytest setup: tests marked `gpu` skip cleanly where no CUDA GPU is usable."""

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    gpu_items = [i for i in items if "gpu" in i.keywords]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none usable here)")
        for item in gpu_items:
            item.add_marker(skip)
