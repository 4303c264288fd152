"""Integrated-gradients methods: each one composes a path, a quadrature rule and a probe."""

from .blur import BlurIntegratedGradients
from .conductance import LayerConductance, NeuronConductance
from .discretized import DiscretizedIntegratedGradients, MonotonicPath, MonotonicPathBuilder
from .expected_gradients import ExpectedGradients
from .generation import GenerationAttribution, GenerationAttributions
from .gradient_shap import GradientShap, LayerGradientShap
from .guided import GuidedIntegratedGradients
from .idgi import IDGI
from .integrated_gradients import IntegratedGradients
from .internal_influence import InternalInfluence
from .layer import LayerIntegratedGradients
from .neuron import NeuronIntegratedGradients
from .noise_tunnel import NoiseTunnel
from .path import PathIntegratedGradients, gradients_and_outputs
from .sequential import LayerSequentialIntegratedGradients, SequentialIntegratedGradients
from .xrai import XRAI

__all__ = [
    "BlurIntegratedGradients",
    "DiscretizedIntegratedGradients",
    "ExpectedGradients",
    "GenerationAttribution",
    "GenerationAttributions",
    "GradientShap",
    "GuidedIntegratedGradients",
    "IDGI",
    "IntegratedGradients",
    "InternalInfluence",
    "LayerConductance",
    "LayerGradientShap",
    "LayerIntegratedGradients",
    "LayerSequentialIntegratedGradients",
    "MonotonicPath",
    "MonotonicPathBuilder",
    "NeuronConductance",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "PathIntegratedGradients",
    "SequentialIntegratedGradients",
    "XRAI",
    "gradients_and_outputs",
]
