"""Small deterministic models and comparison helpers for the core's mathematical tests.

Every factory builds the same weights every time from a private seed (the global random state is left alone), in
the dtype asked for. Models whose path integrand is known in closed form let tests compare against exact integrals.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def seeded(build, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """``build()`` under a private seed, cast to ``dtype``, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.to(dtype).eval()


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def assert_close_scaled(actual, expected, rtol: float = 1e-7, what: str = "") -> None:
    """``max |actual − expected| ≤ rtol · max |expected|`` for each pair of tensors (tuples and lists pair up).

    The scale is the largest magnitude of the expected tensor, so entries near zero (cancellation in the integral)
    do not demand more than the precision of the whole attribution map.
    """
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, type(expected)), (
            f"{what}: got {type(actual).__name__}, expected {type(expected).__name__}"
        )
        assert len(actual) == len(expected), f"{what}: lengths {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_scaled(a, e, rtol, f"{what}[{i}]")
        return
    assert isinstance(actual, torch.Tensor), f"{what}: got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    scale = float(e.abs().max()) if e.numel() else 0.0
    err = float((a - e).abs().max()) if e.numel() else 0.0
    assert err <= rtol * scale + 1e-300, f"{what}: max abs error {err:.3e} > {rtol:.1e} x scale {scale:.3e}"


class PolynomialPath(nn.Module):
    r"""``F(z) = Σ_k a_k z^{k+1} / (k+1)`` summed over features, so that ``F'(z) = p(z) = Σ_k a_k z^k``.

    On the path ``z = α · x`` from the zero baseline with ``x = 1`` the integrand ``d/dα F(αx) = x · p(αx)`` is the
    polynomial ``p(α)`` itself, and the integral is ``F(1) − F(0) = Σ_k a_k / (k+1)``.
    """

    def __init__(self, coefficients) -> None:
        super().__init__()
        self.register_buffer("a", torch.as_tensor(np.asarray(coefficients, dtype=np.float64)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        powers = torch.arange(1, self.a.numel() + 1, dtype=z.dtype, device=z.device)
        terms = z.unsqueeze(-1) ** powers * (self.a.to(z.dtype) / powers)
        return terms.sum(-1).reshape(z.shape[0], -1).sum(1)


def mlp(
    n_in: int = 5, hidden: int = 8, n_out: int = 3, act=nn.Tanh, seed: int = 0, dtype: torch.dtype = torch.float64
) -> nn.Sequential:
    return seeded(lambda: nn.Sequential(nn.Linear(n_in, hidden), act(), nn.Linear(hidden, n_out)), seed, dtype)


class SmallCNN(nn.Module):
    """``(N, 2, 6, 6) -> (N, 4)``: convolution, ReLU, average pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        return self.fc(self.pool(h).flatten(1))


class ThreeInputs(nn.Module):
    """``(x1 (N, 4), x2 (N, 2, 3), x3 (N, 5)) -> (N, 3)`` with interactions between the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x1, x2, x3):
        h = torch.tanh(self.a(x1)) * torch.sigmoid(self.b(x2.flatten(1))) + torch.tanh(self.c(x3))
        return self.head(h)


class GridOutput(nn.Module):
    """``(N, 6) -> (N, 3, 4)``: an output with two dimensions after the batch, for tuple targets."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 12))

    def forward(self, x):
        return self.body(x).view(-1, 3, 4)


class WithExtras(nn.Module):
    """``forward(x, mask, mode)``: a per-example tensor mask and a non-tensor option, neither attributed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))

    def forward(self, x, mask, mode):
        out = self.body(x * mask)
        return out * 2.0 if mode == "double" else out


class TextModel(nn.Module):
    """Token ids and an attention mask -> 3 classes (embedding, masked mean, tanh, linear)."""

    def __init__(self, vocab: int = 20, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids, attention_mask):
        e = self.embed(ids)
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        pooled = (torch.tanh(self.mix(e)) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled)


class TwoBranches(nn.Module):
    """Two inputs through independent layers ``left`` and ``right``, joined by a nonlinear head."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 5)
        self.right = nn.Linear(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x1, x2):
        left = torch.tanh(self.left(x1))
        return self.head(left * torch.tanh(self.right(x2)) + left)
