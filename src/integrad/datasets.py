"""Whole data sets: sharded, resumable, distributed attribution jobs and reading their results back.

The public path of :mod:`integrad.app.jobs`, where they are defined, and of the atomic file writes the jobs use
(:mod:`integrad.app.files`).
"""

from .app.files import atomic_write_bytes, save_tensors
from .app.jobs import (
    BASELINE_NAMES,
    AttributionSet,
    Attributor,
    attribute_dataset,
    check_seed,
    load_attributions,
    make_baselines,
    summarize,
)

__all__ = [
    "AttributionSet",
    "Attributor",
    "BASELINE_NAMES",
    "attribute_dataset",
    "load_attributions",
    "summarize",
    "make_baselines",
    "check_seed",
    "atomic_write_bytes",
    "save_tensors",
]
