"""Whole data sets: sharded, resumable, distributed attribution jobs and reading their results back.

The public path of :mod:`integrad.app.jobs`, where they are defined.
"""

from .app.jobs import AttributionSet, attribute_dataset, load_attributions, summarize

__all__ = ["AttributionSet", "attribute_dataset", "load_attributions", "summarize"]
