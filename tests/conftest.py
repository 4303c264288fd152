"""Fixtures shared by the test modules (pytest finds them here; a module asks for one by name, or with
``pytestmark = pytest.mark.usefixtures(...)``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread, restoring the setting afterwards.

    On a shared 2-core machine every multi-threaded ATen call (even ``index_add_`` of a few floats) can wait a whole
    scheduler slice for its second thread; one thread is both faster and steadier for models this small.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
