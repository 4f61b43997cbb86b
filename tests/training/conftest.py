"""Shared by the training tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    # The tiny model's ops are too small to gain from intra-op threads, and on a busy 2-core
    # runner OpenMP's spin-waiting made the overfit test 10-30x slower. Restored afterwards.
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
