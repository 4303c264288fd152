"""The integrated-gradients tutorial's examples, with the numbers it prints.

The toy models are piecewise linear, so their attributions follow from where the path crosses a kink, and the
printed values are the Gauss–Legendre approximations of those step integrals. They are deterministic and are
asserted to the digits the tutorial prints. The softmax model is randomly initialised there; here it is seeded and
compared with captum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from integrad import IntegratedGradients
from integrad.rules import alphas_and_weights

from models import assert_close_scaled, seeded


class ToyModel(nn.Module):
    """``f(x1, x2) = ReLU(ReLU(x1) − 1 − ReLU(x2))`` (Sundararajan et al. 2017, page 10)."""

    def forward(self, input1, input2):
        return F.relu(F.relu(input1) - 1 - F.relu(input2))


class ToyModelWithAdditionalForwardArgs(nn.Module):
    """``f(x1, x2)[:, index] = ReLU(ReLU(x1 − 1) − ReLU(x2))[:, index]``."""

    def forward(self, input1, input2, index):
        return F.relu(F.relu(input1 - 1) - F.relu(input2))[:, index]


class ToySoftmaxModel(nn.Module):
    def __init__(self, num_in, num_hidden, num_out):
        super().__init__()
        self.lin1 = nn.Linear(num_in, num_hidden)
        self.lin2 = nn.Linear(num_hidden, num_hidden)
        self.lin3 = nn.Linear(num_hidden, num_out)
        self.softmax = nn.Softmax(dim=1)

    def forward(self, input):
        lin1 = F.relu(self.lin1(input))
        lin2 = F.relu(self.lin2(lin1))
        return self.softmax(self.lin3(lin2))


def test_toy_model_attributions_are_one_and_a_half_and_minus_a_half():
    input1 = torch.tensor([3.0], requires_grad=True)
    input2 = torch.tensor([1.0], requires_grad=True)
    baselines = (torch.tensor([0.0]), torch.tensor([0.0]))
    ig = IntegratedGradients(ToyModel())
    (a1, a2), delta = ig.attribute(
        (input1, input2), baselines=baselines, method="gausslegendre", return_convergence_delta=True
    )
    # On the path α(3, 1) the output is ReLU(2α − 1): x1's gradient is 1 and x2's is −1 for α > 1/2. The 50
    # Gauss–Legendre nodes are symmetric about 1/2, so the weight beyond the kink is exactly 1/2.
    assert a1.shape == (1,) and a2.shape == (1,)
    torch.testing.assert_close(a1, torch.tensor([1.5]), rtol=0, atol=1e-5)
    torch.testing.assert_close(a2, torch.tensor([-0.5]), rtol=0, atol=1e-5)
    assert delta.shape == (1,)
    # The tutorial prints 1.18e-05 from float32 rounding; the exact delta is zero.
    assert float(delta.abs()) < 2e-5
    # The inputs' gradients were not touched.
    assert input1.grad is None and input2.grad is None


def test_additional_forward_args_example_prints_the_tutorials_numbers():
    input1 = torch.tensor([[1.0, 3.0], [3.0, 5.0]], requires_grad=True)
    input2 = torch.tensor([[1.0, 4.0], [0.0, 2.0]], requires_grad=True)
    ig = IntegratedGradients(ToyModelWithAdditionalForwardArgs())
    (a1, a2), delta = ig.attribute(
        (input1, input2), n_steps=100, additional_forward_args=1, return_convergence_delta=True
    )
    torch.testing.assert_close(a1, torch.tensor([[0.0, 0.0], [0.0, 3.3428]]), rtol=0, atol=1e-4)
    torch.testing.assert_close(a2, torch.tensor([[0.0, 0.0], [0.0, -1.3371]]), rtol=0, atol=1e-4)
    assert delta.shape == (2,)
    assert abs(float(delta[0])) < 1e-6
    assert abs(float(delta[1]) - 0.005694) < 1e-4
    # The first example never leaves the flat region: every attribution is exactly zero.
    assert torch.equal(a1[0], torch.zeros(2)) and torch.equal(a2[0], torch.zeros(2))


def test_additional_forward_args_example_in_float64_matches_the_exact_step_integral():
    """The printed 3.3428 / −1.3371 are the quadrature of a step at α = 1/3: 5 · 2/3 and −2 · 2/3 in the limit."""
    input1 = torch.tensor([[3.0, 5.0]], dtype=torch.float64)
    input2 = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    ig = IntegratedGradients(ToyModelWithAdditionalForwardArgs())
    (a1, a2), delta = ig.attribute(
        (input1, input2), n_steps=100, additional_forward_args=1, return_convergence_delta=True
    )
    (b1, b2) = ig.attribute((input1, input2), n_steps=100, method="riemann_middle", additional_forward_args=1)
    # The gradient of x1[1] is 1 and of x2[1] is −1 for α > 1/3; a rule's attributions are x · (weight beyond 1/3).
    for (r1, r2), method in (((a1, a2), "gausslegendre"), ((b1, b2), "riemann_middle")):
        alphas, weights = alphas_and_weights(method, 100)
        beyond = float(weights[alphas > 1 / 3].sum())
        torch.testing.assert_close(r1, torch.tensor([[0.0, 5.0 * beyond]], dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(r2, torch.tensor([[0.0, -2.0 * beyond]], dtype=torch.float64), rtol=0, atol=1e-14)
    # F(x) − F(0) = ReLU(4 − 2) = 2, so delta = 3 · beyond − 2.
    alphas, weights = alphas_and_weights("gausslegendre", 100)
    torch.testing.assert_close(
        delta, torch.tensor([3.0 * float(weights[alphas > 1 / 3].sum()) - 2.0], dtype=torch.float64), rtol=0, atol=1e-13
    )


def test_toy_softmax_model_attributions_have_the_input_shape_and_match_captum():
    from captum.attr import IntegratedGradients as CaptumIG

    num_in = 40
    model = seeded(lambda: ToySoftmaxModel(num_in, 20, 10), seed=123, dtype=torch.float32)
    input = torch.arange(0.0, num_in * 1.0, requires_grad=True).unsqueeze(0)
    target_class_index = 5
    attributions, delta = IntegratedGradients(model).attribute(
        input, target=target_class_index, return_convergence_delta=True
    )
    assert attributions.shape == input.shape
    assert attributions.dtype == torch.float32
    assert delta.shape == (1,)
    with torch.no_grad():
        gap = float(model(input)[0, 5] - model(torch.zeros_like(input))[0, 5])
    assert abs(float(delta)) < 1e-2 * max(abs(gap), 1e-3)
    theirs, their_delta = CaptumIG(model).attribute(input, target=target_class_index, return_convergence_delta=True)
    assert_close_scaled(attributions, theirs, rtol=1e-4)
    assert abs(float(delta) - float(their_delta)) < 1e-4 * max(abs(gap), 1e-3) + 1e-6


def test_toy_softmax_model_in_float64_matches_captum_tightly():
    from captum.attr import IntegratedGradients as CaptumIG

    model = seeded(lambda: ToySoftmaxModel(40, 20, 10), seed=123)
    input = torch.arange(0.0, 40.0, dtype=torch.float64).unsqueeze(0)
    ours, delta = IntegratedGradients(model).attribute(input, target=5, return_convergence_delta=True)
    theirs, their_delta = CaptumIG(model).attribute(input, target=5, return_convergence_delta=True)
    assert_close_scaled(ours, theirs, rtol=1e-7)
    torch.testing.assert_close(delta, their_delta, rtol=0, atol=1e-7 * float(theirs.abs().sum()))
