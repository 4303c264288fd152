"""Integrated-gradients methods: each one composes a path, a quadrature rule and a probe."""

from .blur import BlurIntegratedGradients
from .guided import GuidedIntegratedGradients
from .idgi import IDGI
from .integrated_gradients import IntegratedGradients
from .layer import LayerIntegratedGradients
from .neuron import NeuronIntegratedGradients
from .noise_tunnel import NoiseTunnel
from .path import PathIntegratedGradients, gradients_and_outputs

__all__ = [
    "BlurIntegratedGradients",
    "GuidedIntegratedGradients",
    "IDGI",
    "IntegratedGradients",
    "LayerIntegratedGradients",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "PathIntegratedGradients",
    "gradients_and_outputs",
]
