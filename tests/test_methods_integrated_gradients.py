"""IntegratedGradients, the method on the inputs (:mod:`integrad.methods.integrated_gradients`): its path integrand.

Its attributions are checked by the modules of what they are made of: the rules (test_rules), the engine
(test_chunking, test_engine_evaluate, test_tuning), ``n_steps="auto"`` (test_adaptive), the arguments
(test_arguments), and across the methods by the cross-cutting modules (test_captum_agreement, test_state, ...).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch
from numpy.polynomial import polynomial as nppoly

from integrad import IntegratedGradients

from models import PolynomialPath, random_polynomial


def test_integrand_is_the_polynomial_on_the_path():
    rng = np.random.default_rng(3)
    a = random_polynomial(rng, 5)
    ig = IntegratedGradients(PolynomialPath(a))
    x = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    alphas = np.linspace(0.0, 1.0, 9)
    g = ig.integrand(x, alphas)
    assert g.shape == (2, 9) and g.dtype == torch.float64
    # d/dα F(α x) = x · p(α x)
    expected = np.stack([v * nppoly.polyval(alphas * v, a) for v in (1.0, 0.5)])
    np.testing.assert_allclose(g.numpy(), expected, rtol=0, atol=1e-13)


def test_integrand_takes_the_rules_own_read_only_points_without_a_warning():
    """The documented use, ``integrand(x, alphas_and_weights(...)[0])``, must not warn about non-writable arrays.

    Run in a fresh interpreter: torch emits that warning once per process, so an earlier test could hide it.
    """
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('error')\n"
        "from integrad import IntegratedGradients\n"
        "from integrad.rules import alphas_and_weights\n"
        "alphas, _ = alphas_and_weights('gausslegendre', 5)\n"
        "g = IntegratedGradients(lambda z: (z ** 3).sum(1)).integrand(torch.ones(1, 2, dtype=torch.float64), alphas)\n"
        "assert torch.allclose(g, 6 * torch.from_numpy(alphas.copy()) ** 2)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
