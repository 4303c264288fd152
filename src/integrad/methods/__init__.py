"""Integrated-gradients methods: each one composes a path, a quadrature rule and a probe."""

from .integrated_gradients import IntegratedGradients
from .layer import LayerIntegratedGradients
from .neuron import NeuronIntegratedGradients
from .noise_tunnel import NoiseTunnel
from .path import PathIntegratedGradients, gradients_and_outputs

__all__ = [
    "IntegratedGradients",
    "LayerIntegratedGradients",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "PathIntegratedGradients",
    "gradients_and_outputs",
]
