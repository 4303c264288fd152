"""More model and data-set factories for the command-line tests: inputs that go wrong part-way, sequences, layers.

Used as ``--model fixtures_cli_models:NAME`` / ``--data fixtures_cli_models:NAME``, like ``fixtures_models``.
Every factory builds the same weights every time, from a private seed.
"""

from __future__ import annotations

import os

import torch
from torch import nn

VOCAB = 30
SEQ_FEATURES = 4
N_CLASSES = 3


def _seeded(build, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


class TokenIds(nn.Module):
    """Token ids (N, L) from a vocabulary of 30 -> 3 classes (embedding, mean, linear)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
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
