"""Metrics of attribution quality, one signature for all: ``metric(model, inputs, attributions, targets, **options)``.

The public path of :mod:`integrad.evaluate.metrics`, where they are defined.
"""

from .evaluate.metrics import *  # noqa: F403
from .evaluate.metrics import __all__  # noqa: F401
