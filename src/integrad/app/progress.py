"""Progress on standard error for long commands."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator


@contextlib.contextmanager
def progress_bar(total: int, what: str, show: bool = True) -> Iterator:
    """A tqdm bar counting ``total`` examples on standard error, or a stand-in that shows nothing; either has
    ``update(n)``."""
    if not show:
        yield types.SimpleNamespace(update=lambda n: None)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="ex", desc=what, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    try:
        yield bar
    finally:
        bar.close()
