"""Settings for the whole test suite."""

from typing import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The tests' models are tiny: one thread runs them faster than threads competing for the
    machine's cores (CI has two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
