"""Integrated-gradients methods: each one composes a path, a quadrature rule and a probe."""

from .blur import BlurIntegratedGradients
from .expected_gradients import ExpectedGradients
from .gradient_shap import GradientShap, LayerGradientShap
from .guided import GuidedIntegratedGradients
from .idgi import IDGI
from .integrated_gradients import IntegratedGradients
from .layer import LayerIntegratedGradients
from .neuron import NeuronIntegratedGradients
from .noise_tunnel import NoiseTunnel
from .path import PathIntegratedGradients, gradients_and_outputs
from .xrai import XRAI

__all__ = [
    "BlurIntegratedGradients",
    "ExpectedGradients",
    "GradientShap",
    "GuidedIntegratedGradients",
    "IDGI",
    "IntegratedGradients",
    "LayerGradientShap",
    "LayerIntegratedGradients",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "PathIntegratedGradients",
    "XRAI",
    "gradients_and_outputs",
]
