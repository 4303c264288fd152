"""Integrated-gradients methods: each one composes a path, a quadrature rule and a probe."""

from .integrated_gradients import IntegratedGradients
from .layer import LayerIntegratedGradients
from .neuron import NeuronIntegratedGradients
from .noise_tunnel import NoiseTunnel

__all__ = ["IntegratedGradients", "LayerIntegratedGradients", "NeuronIntegratedGradients", "NoiseTunnel"]
