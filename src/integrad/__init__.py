"""integrad: Integrated Gradients for PyTorch.

A drop-in replacement for captum's integrated-gradients family (change the import, keep the results) with exact
quadrature in float64, memory-budgeted chunking, early exit for neurons and error-controlled step counts.
"""

from . import paths
from .engine import IntegrationReport
from .methods import (
    IntegratedGradients,
    LayerIntegratedGradients,
    NeuronIntegratedGradients,
    NoiseTunnel,
    PathIntegratedGradients,
    gradients_and_outputs,
)

__version__ = "0.1.0"

__all__ = [
    "IntegratedGradients",
    "LayerIntegratedGradients",
    "NeuronIntegratedGradients",
    "NoiseTunnel",
    "PathIntegratedGradients",
    "gradients_and_outputs",
    "paths",
    "IntegrationReport",
    "__version__",
]
