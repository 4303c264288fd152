"""Model factories for the tests of the command line's method families and of ``integrad explain-text``.

Used as ``--model fixtures_methods:NAME`` with this folder on ``sys.path``, like ``fixtures_models``. Every factory
builds the same weights every time, from a private seed, without touching the global random state.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import _causal_lm

N_CLASSES = 3


def _seeded(build, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.eval()


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
    return copy.deepcopy(_causal_lm.trained_model()), _causal_lm.tokenizer()


def causal_lm_alone() -> nn.Module:
    """The same model without a tokenizer: prompts are then token ids."""
    return copy.deepcopy(_causal_lm.trained_model())
