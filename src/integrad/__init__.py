"""integrad: Integrated Gradients for PyTorch.

A drop-in replacement for captum's integrated-gradients family (change the import, keep the results) with exact
quadrature in float64, memory-budgeted chunking, early exit for neurons and error-controlled step counts, and the
integrated-gradients methods of the other libraries on the same engine: any path (``paths``), Blur IG, Guided IG,
IDGI, Expected Gradients, GradientShap, XRAI, Sequential and Discretized IG, conductance and internal influence, and
the attribution of generated text.
"""

from . import paths
from .engine import IntegrationReport
from .methods import *  # noqa: F403  (the public methods, listed in methods.__all__)
from .methods import __all__ as _methods

__version__ = "0.1.0"

__all__ = [*_methods, "paths", "IntegrationReport", "__version__"]
