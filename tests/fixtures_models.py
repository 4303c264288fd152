"""Model and data-set factories for the command-line tests.

Used as ``--model fixtures_models:NAME`` with this folder on ``sys.path`` (pytest puts it there for in-process
calls; subprocesses get it through ``PYTHONPATH``). Every factory builds the same weights every time, from a
private seed, without touching the global random state. Smooth activations keep the path integrand smooth, so
a modest number of Gauss–Legendre points integrates it to high accuracy.
"""

from __future__ import annotations

import time

import torch
from torch import nn

N_FEATURES = 6
N_CLASSES = 3
VOCAB = 30522  # the MiniLM vocabulary, so that its tokenizer's ids fit


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


def mlp() -> nn.Module:
    """6 features -> 3 classes."""
    return _seeded(lambda: nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, N_CLASSES)))


def linear() -> nn.Module:
    """6 features -> 3 classes, no bias-free tricks: IG from zeros is exactly x * W[target]."""
    return _seeded(lambda: nn.Linear(N_FEATURES, N_CLASSES), seed=1)


def scalar_mlp() -> nn.Module:
    """6 features -> one score per example, shape (N,)."""

    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.Tanh(), nn.Linear(8, 1))

        def forward(self, x):
            return self.body(x).squeeze(-1)

    return _seeded(Scalar, seed=2)


def small_cnn() -> nn.Module:
    """Images (N, 1, 8, 8) -> 3 classes."""
    return _seeded(
        lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, N_CLASSES)),
        seed=3,
    )


def rgb_cnn() -> nn.Module:
    """RGB images of any size (N, 3, H, W) -> 3 classes."""
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, N_CLASSES)
        ),
        seed=4,
    )


class TextClassifier(nn.Module):
    """Token ids and attention mask -> 2 classes (embedding, masked mean, linear)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8, padding_idx=0)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids, attention_mask):
        e = self.embed(input_ids)
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        return self.head(torch.tanh((e * m).sum(1) / m.sum(1).clamp_min(1.0)))


def text_classifier() -> nn.Module:
    return _seeded(TextClassifier, seed=5)


class Slow(nn.Module):
    """The MLP with a pause in every forward call, so that a run can be interrupted part-way."""

    def __init__(self, pause: float = 0.04):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(N_FEATURES, 16), nn.Tanh(), nn.Linear(16, N_CLASSES))
        self.pause = pause

    def forward(self, x):
        time.sleep(self.pause)
        return self.body(x)


def slow_mlp() -> nn.Module:
    return _seeded(Slow, seed=6)


def not_a_module():
    return 42


def tensor_dataset():
    """A map-style dataset of (x, y) pairs."""
    g = torch.Generator().manual_seed(7)
    X = torch.randn(10, N_FEATURES, generator=g)
    y = torch.arange(10) % N_CLASSES
    return torch.utils.data.TensorDataset(X, y)
