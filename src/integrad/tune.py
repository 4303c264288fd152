"""Tuning an explainer's settings against a metric with Optuna (``pip install ".[tune]"``).

The public path of :mod:`integrad.evaluate.tune`, where it is defined.
"""

from .evaluate.tune import *  # noqa: F403
from .evaluate.tune import __all__  # noqa: F401
