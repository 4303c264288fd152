"""PAIR saliency as a reference: a small torch CNN behind saliency's ``call_model_function`` convention.

saliency works on one example at a time, as numpy arrays: Blur IG blurs the first two axes of an (H, W, C) image,
Guided IG takes any shape. The functions here hand it one example (float64) and return its mask as a tensor in the
layout integrad uses, (C, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

GRADIENTS = "INPUT_OUTPUT_GRADIENTS"


def small_cnn(seed: int = 0, channels: int = 3, classes: int = 4) -> nn.Module:
    """Two smooth convolutions, a pooling and a linear read-out, float64: ``(N, C, H, W) -> (N, classes)``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Softplus(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, classes),
        )
    return net.double().eval()


def call_model_function(model: nn.Module, target: int, channels_last: bool):
    """saliency's ``call_model_function(batch, call_model_args, expected_keys)``: the gradient of
    ``model(batch)[:, target]`` with respect to a numpy batch, (K, H, W, C) with ``channels_last`` else (K, C, H, W)."""

    def call(batch, call_model_args=None, expected_keys=None):
        z = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float64))
        if channels_last:
            z = z.permute(0, 3, 1, 2)
        z = z.detach().requires_grad_()
        (grad,) = torch.autograd.grad(model(z)[:, target].sum(), z)
        if channels_last:
            grad = grad.permute(0, 2, 3, 1)
        return {GRADIENTS: grad.numpy()}

    return call


def blur_ig(model: nn.Module, image: torch.Tensor, target: int, **settings) -> torch.Tensor:
    """saliency's ``BlurIG().GetMask`` of one (C, H, W) image, as a (C, H, W) tensor."""
    from saliency.core import BlurIG

    hwc = image.detach().double().permute(1, 2, 0).numpy()
    mask = BlurIG().GetMask(hwc, call_model_function(model, target, channels_last=True), **settings)
    return torch.from_numpy(np.asarray(mask)).permute(2, 0, 1)


def guided_ig(
    model: nn.Module, image: torch.Tensor, baseline: torch.Tensor, target: int, record: list | None = None, **settings
) -> torch.Tensor:
    """saliency's ``GuidedIG().GetMask`` of one example; ``record`` receives every point where it takes a gradient
    (the path's points ``x_0 … x_{n−1}``)."""
    from saliency.core import GuidedIG

    call = call_model_function(model, target, channels_last=False)

    def recording(batch, call_model_args=None, expected_keys=None):
        if record is not None:
            record.append(torch.from_numpy(np.array(batch[0], dtype=np.float64)))
        return call(batch, call_model_args, expected_keys)

    mask = GuidedIG().GetMask(
        image.detach().double().numpy(), recording, x_baseline=baseline.detach().double().numpy(), **settings
    )
    return torch.from_numpy(np.asarray(mask))


def quantile_accepting_interpolation(original):
    """``numpy.quantile`` that also takes the ``interpolation=`` keyword NumPy 2.4 removed (saliency's Guided IG
    still passes it), as ``method=``. Install it with ``monkeypatch.setattr(np, "quantile", ...)`` for one test."""

    def quantile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return original(a, q, *args, **kwargs)

    return quantile
