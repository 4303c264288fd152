"""Model and data-set factories for the command line's tests: the models, data sets and language models that
``--model cli_factories:NAME`` and ``--data cli_factories:NAME`` name.

Used with this folder on ``sys.path`` (pytest puts it there for in-process calls; subprocesses get it through
``PYTHONPATH``). Every factory builds the same weights every time, from a private seed, without touching the global
random state. Smooth activations keep the path integrand smooth, so a modest number of Gauss–Legendre points
integrates it to high accuracy.
"""

from __future__ import annotations

import copy
import os
import time

import torch
from torch import nn

import trained

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


TOKEN_VOCAB = 30
SEQ_FEATURES = 4


class TokenIds(nn.Module):
    """Token ids (N, L) from a vocabulary of 30 -> 3 classes (embedding, mean, linear)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(TOKEN_VOCAB, 8)
        self.head = nn.Linear(8, N_CLASSES)

    def forward(self, ids):
        return self.head(torch.tanh(self.embed(ids).mean(1)))


def token_ids() -> nn.Module:
    return _seeded(TokenIds, seed=11)


def sequence() -> nn.Module:
    """Float sequences (N, L, 4) of any length -> 3 classes; linear in the input."""

    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(SEQ_FEATURES, N_CLASSES)

        def forward(self, x):
            return self.head(x.mean(1))

    return _seeded(Sequence, seed=12)


class Recurrent(nn.Module):
    """Sequences (N, L, 4) -> 3 classes through an nn.LSTM, whose output is a tuple."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(SEQ_FEATURES, 5, batch_first=True)
        self.head = nn.Linear(5, N_CLASSES)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def recurrent() -> nn.Module:
    return _seeded(Recurrent, seed=13)


class LabelledRows(torch.utils.data.Dataset):
    """10 rows of 6 features with labels 0..2; item 9's label is $FIXTURE_LAST_LABEL (default 7, out of range)."""

    def __init__(self):
        g = torch.Generator().manual_seed(14)
        self.x = torch.randn(10, 6, generator=g)
        self.y = torch.arange(10) % N_CLASSES

    def __len__(self):
        return 10

    def __getitem__(self, i):
        if i == 9:
            return self.x[i], int(os.environ.get("FIXTURE_LAST_LABEL", "7"))
        return self.x[i], int(self.y[i])


def bad_last_label():
    return LabelledRows()


class Ragged(torch.utils.data.Dataset):
    """6 rows of 6 features, but item 4 has 5."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.ones(5 if i == 4 else 6) * i


class RootFeatures(nn.Module):
    """6 features -> 2 scores built from sqrt(|x|): a feature that is 0 gets a NaN attribution (0 * infinity)."""

    def forward(self, x):
        root = x.abs().sqrt().sum(1)
        return torch.stack([root, -root], dim=1)


def root_features() -> nn.Module:
    return RootFeatures().eval()


class NanItem(torch.utils.data.Dataset):
    """6 rows of 6 features; item 4 holds a NaN."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        x = torch.ones(6) * i
        if i == 4:
            x[2] = float("nan")
        return x


def grey_cnn() -> nn.Module:
    """Grey images (N, 1, H, W) of any size -> 3 classes, smooth (tanh), so that blurring changes the output."""
    return _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, N_CLASSES)
        ),
        seed=21,
    )


def causal_lm():
    """The tests' small character-level GPT-2 (a copy) with its tokenizer."""
    return copy.deepcopy(trained.trained_model()), trained.tokenizer()


def causal_lm_alone() -> nn.Module:
    """The same model without a tokenizer: prompts are then token ids."""
    return copy.deepcopy(trained.trained_model())
