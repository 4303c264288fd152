"""Trained models shared by the tests: a small CNN on scikit-learn's digits, and a character-level GPT-2.

**Digits.** The CNN is trained once per process (cached), with a fixed seed, on scikit-learn's 8x8 digits scaled to
[0, 1] as ``(N, 1, 8, 8)`` float32 images; training takes a few seconds on two CPU cores.

**Causal language model.** No pretrained causal language model ships offline, so the generation tests use the
documentation's small GPT-2, ``docs/snippets/tiny_gpt2.py`` (one copy of the code, which the command-line page shows
and the generation picture draws from): two layers, width 32, a vocabulary of the printable ASCII characters, a
newline and an end-of-text token, and a real ``transformers`` fast tokenizer over it, trained for a few seconds on
the module docstrings of Python's standard library. Training is seeded and runs on one thread, so every session gets
the same weights; the result is cached for the session.
"""

from __future__ import annotations

import copy
import functools
import runpy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import transformers


class DigitsCNN(nn.Module):
    """Two convolutions, a pooling and a linear read-out: ``(N, 1, 8, 8) -> (N, 10)`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class Digits:
    model: DigitsCNN
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_accuracy: float


@functools.lru_cache(maxsize=1)
def digits() -> Digits:
    """The trained digits CNN (eval mode, gradients of its parameters off) with its train/test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:1400], order[1400:]
    threads = torch.get_num_threads()
    # A model this small trains fastest on one thread; more only add synchronisation (restored below).
    torch.set_num_threads(1)
    try:
        model = _train(images[train], labels[train], generator)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    return Digits(model, images[train], labels[train], images[test], labels[test], accuracy)


def _train(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> DigitsCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitsCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(12):
            for batch in torch.randperm(len(labels), generator=generator).split(64):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
                loss.backward()
                optimizer.step()
    return model


class MaskedDigits(nn.Module):
    """Digits CNN called with an extra per-pixel mask: ``model(x, mask) = cnn(x * mask)``.

    Used for batches shaped ``(x, mask, label)``, where only ``x`` is attributed and ``mask`` is passed along.
    """

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.cnn(x * mask)


# ------------------------------------------------------------------------------------------- causal language model
#: The small GPT-2 of the documentation, trained by the site's own code (the command-line page shows it).
LANGUAGE_MODEL = Path(__file__).resolve().parents[1] / "docs" / "snippets" / "tiny_gpt2.py"


@functools.cache
def _language_model() -> dict:
    """The names ``docs/snippets/tiny_gpt2.py`` defines, run once per session on one thread (a tiny model gains
    nothing from more, and on a busy machine loses much), without touching the caller's random state."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            return runpy.run_path(str(LANGUAGE_MODEL))
    finally:
        torch.set_num_threads(threads)


def vocabulary_size() -> int:
    """Token 0 ends a text (and pads); then the newline and the printable ASCII characters."""
    return len(_language_model()["VOCABULARY"])


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """One token per character; characters outside the vocabulary become ``?``."""
    return _language_model()["tokenizer"]


def trained_model() -> transformers.GPT2LMHeadModel:
    """The trained model in float32, in eval mode. Shared by the session: copy it before changing it."""
    return _language_model()["lm"]


@functools.cache
def double_model() -> transformers.GPT2LMHeadModel:
    """The trained model cast to float64 (a copy), for comparisons at 1e-9."""
    return copy.deepcopy(trained_model()).double().eval()


def held_out_accuracy(model: torch.nn.Module) -> tuple[float, float]:
    """Greedy next-character accuracy on the held-out text (after 8 characters of context in each window), and the
    accuracy of always predicting the most frequent training character."""
    names = _language_model()
    train, held, context = names["training_ids"], names["held_out_ids"], names["CONTEXT"]
    windows = (len(held) - 1) // context
    inputs = held[: windows * context].view(windows, context)
    targets = held[1 : windows * context + 1].view(windows, context)
    with torch.no_grad():
        predicted = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits.argmax(-1)
    accuracy = (predicted[:, 8:] == targets[:, 8:]).double().mean().item()
    majority = torch.bincount(train, minlength=vocabulary_size()).max().item() / len(train)
    return accuracy, majority
