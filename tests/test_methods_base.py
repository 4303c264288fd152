"""What every path method shares (:mod:`integrad.methods.base`): the convergence delta, which evaluates both ends of
the path for the whole batch at once.

The rest of what the module does is checked across every method by the cross-cutting modules: the caller's model
state (``keeps_model_state``) in test_state, ``last_report`` per thread in test_threads, ``grad_kwargs``, ``get_name``
and ``attribute_future`` in test_signatures, ``compute_convergence_delta`` against captum's in test_captum_agreement.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from integrad import IntegratedGradients


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_middle"])
def test_convergence_delta_end_points_take_one_forward_pass(method):
    """Rules without both end points evaluate F(x′) and F(x) for the whole batch in one forward pass, and
    compute_convergence_delta likewise: never one example at a time."""
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(5, 6)
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    ig = IntegratedGradients(model)
    attributions, delta = ig.attribute(x, target=1, n_steps=8, method=method, return_convergence_delta=True)
    assert sizes == [40, 10]  # the path in one chunk, then both end points together
    sizes.clear()
    again = ig.compute_convergence_delta(attributions, torch.zeros_like(x), x, target=1)
    assert sizes == [10]
    torch.testing.assert_close(again, delta)
