"""Small trained models shared by the explainer, baseline and tuning tests.

The digits CNN is trained once per process (cached), with a fixed seed, on scikit-learn's 8x8 digits scaled to
[0, 1] as ``(N, 1, 8, 8)`` float32 images; training takes a few seconds on two CPU cores.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn as nn


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
