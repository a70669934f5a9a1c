"""pytest-benchmark settings for the op benchmarks: these are timing runs, not tests."""

import torch


def pytest_configure(config):
    torch.manual_seed(0)
