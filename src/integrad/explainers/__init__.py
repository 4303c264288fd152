"""Explainers: attribution methods behind one interface (a model, a batch, targets), with baselines and tunables.

>>> from integrad.explainers import IntegratedGradients
>>> explainer = IntegratedGradients(model, n_steps=32, baseline_fn="gaussian_blur")   # doctest: +SKIP
>>> attributions = explainer.attribute(images, labels)                                # doctest: +SKIP
"""

from .base import Explainer
from .baselines import BASELINES, get_baseline_fn
from .core import CoreExplainer
from .integrated_gradients import IntegratedGradients
from .support import SUPPORTED_MODULES, Attention, Convolution, Linear, ModuleCategory, SupportReport, check_support
from .variants import XRAI, BlurIntegratedGradients, ExpectedGradients, GradientShap, GuidedIntegratedGradients

__all__ = [
    "Attention",
    "BASELINES",
    "BlurIntegratedGradients",
    "Convolution",
    "CoreExplainer",
    "Explainer",
    "ExpectedGradients",
    "GradientShap",
    "GuidedIntegratedGradients",
    "IntegratedGradients",
    "Linear",
    "ModuleCategory",
    "SUPPORTED_MODULES",
    "SupportReport",
    "XRAI",
    "check_support",
    "get_baseline_fn",
]
