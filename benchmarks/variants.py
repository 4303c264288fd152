"""Benchmarks of the integrated-gradients variants against their peers.

    python -m benchmarks.variants [--quick] [--only NAME[,NAME]] [--threads 2] [--out results.json]
                                  [--markdown section.md]

Each workload runs integrad and its peer (PAIR saliency, captum, or a loop of integrad calls) in one process:
warmed up, then in rounds whose order alternates (peer, integrad; then integrad, peer) so slow drift of the machine
cancels. The reports are medians of per-round time ratios with their interquartile range. Before timing, the same
call of both sides on a float64 copy of the model is compared at the tolerance of the project's tests. The
Expected Gradients workload is a study of accuracy per row instead: the deterministic and the random estimators
against an accurate reference.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from . import run as R
from . import workloads as W

ORDER = [
    "blur_digits",
    "blur_large",
    "guided_digits",
    "gradient_shap_cnn",
    "gradient_shap_mlp",
    "expected_gradients",
    "sequential",
    "layer_conductance",
    "generation",
]
#: Workloads left out of ``--quick`` (their peer alone takes seconds per call).
FULL_ONLY = {"blur_large"}
GRADIENTS = "INPUT_OUTPUT_GRADIENTS"
log = R.log

# --------------------------------------------------------------------------- models and data


@dataclass
class Digits:
    """scikit-learn's 8x8 digits as ``(N, 1, 8, 8)`` float32 in [0, 1], a CNN trained on the first 1500, and the
    held-out images explained by the workloads."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    accuracy: float
    train_s: float

    def explained(self, n: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[1500 : 1500 + n].to(dtype), self.labels[1500 : 1500 + n]

    def background(self, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.images[:n].to(dtype)


_DIGITS: Digits | None = None


def digits() -> Digits:
    """The demo's digits CNN, trained for five epochs (seeded) so that paths cross a real model's curvature."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits

        from integrad.app.demo import digits_cnn

        data = load_digits()
        images = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
        labels = torch.tensor(data.target, dtype=torch.long)
        t0, threads = time.perf_counter(), torch.get_num_threads()
        # Batches of 50 tiny images gain nothing from a second thread, and on a busy machine lose much.
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = digits_cnn()
                optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
                for _epoch in range(5):
                    for batch in torch.randperm(1500).split(50):
                        optimizer.zero_grad()
                        nn.functional.cross_entropy(model(images[batch]), labels[batch]).backward()
                        optimizer.step()
        finally:
            torch.set_num_threads(threads)
        model.eval()
        with torch.no_grad():
            accuracy = float((model(images[1500:]).argmax(1) == labels[1500:]).float().mean())
        _DIGITS = Digits(model, images, labels, accuracy, time.perf_counter() - t0)
    return _DIGITS


def as_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The model itself in float32, a float64 copy otherwise (the timed model is never changed)."""
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


class SequenceClassifier(nn.Module):
    """``(batch, length, 8) -> (batch, 3)``: a linear embedding, two transformer encoder layers, mean pooling."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.embed = nn.Linear(8, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def small_gpt2(seed: int = 0) -> nn.Module:
    """A GPT-2 with random weights: vocabulary 96, width 64, two layers of four heads (nothing is downloaded)."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=96,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.GPT2LMHeadModel(config).eval()


# --------------------------------------------------------------------------- PAIR saliency as the peer


def call_model_function(model: nn.Module, target: int, channels_last: bool) -> Callable:
    """saliency's ``call_model_function(batch, call_model_args, expected_keys)`` around a torch model: the gradient of
    ``model(batch)[:, target]`` for a numpy batch, in the model's dtype, returned in the batch's dtype."""
    dtype = next(model.parameters()).dtype

    def call(batch, call_model_args=None, expected_keys=None):
        z = torch.from_numpy(np.ascontiguousarray(batch)).to(dtype)
        if channels_last:
            z = z.permute(0, 3, 1, 2)
        z.requires_grad_()
        (grad,) = torch.autograd.grad(model(z)[:, target].sum(), z)
        if channels_last:
            grad = grad.permute(0, 2, 3, 1)
        return {GRADIENTS: grad.detach().numpy().astype(batch.dtype, copy=False)}

    return call


@contextlib.contextmanager
def quantile_accepting_interpolation() -> Iterator[None]:
    """saliency's Guided IG passes ``interpolation=`` to ``numpy.quantile``, which NumPy 2.4 removed: for the
    peer's calls only, ``numpy.quantile`` takes it as ``method=``."""
    original = np.quantile

    def quantile(a, q, *args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return original(a, q, *args, **kwargs)

    np.quantile = quantile
    try:
        yield
    finally:
        np.quantile = original


def saliency_blur(model, images, targets, batch_size: int, **settings) -> torch.Tensor:
    """``BlurIG().GetMask`` image by image ((H, W, C) arrays), stacked as ``(N, C, H, W)``."""
    from saliency.core import BlurIG

    masks = []
    for image, target in zip(images, targets.tolist()):
        hwc = image.permute(1, 2, 0).numpy()
        call = call_model_function(model, target, channels_last=True)
        masks.append(BlurIG().GetMask(hwc, call, batch_size=batch_size, **settings))
    return torch.from_numpy(np.stack(masks)).permute(0, 3, 1, 2)


def saliency_guided(model, images, baselines, targets, **settings) -> torch.Tensor:
    """``GuidedIG().GetMask`` image by image, stacked as ``(N, C, H, W)``."""
    from saliency.core import GuidedIG

    masks = []
    with quantile_accepting_interpolation():
        for image, baseline, target in zip(images, baselines, targets.tolist()):
            call = call_model_function(model, target, channels_last=False)
            masks.append(GuidedIG().GetMask(image.numpy(), call, x_baseline=baseline.numpy(), **settings))
    return torch.from_numpy(np.stack(masks))


def gradient_floor(model: nn.Module, points: torch.Tensor, targets: torch.Tensor) -> Callable[[], Any]:
    """One forward and backward pass over path points built beforehand: the model's share of any method's time."""
    points = points.detach().requires_grad_()

    def floor():
        (grad,) = torch.autograd.grad(model(points).gather(1, targets[:, None]).sum(), points)
        return grad

    return floor


def stepwise_floor(model: nn.Module, points: torch.Tensor, targets: torch.Tensor) -> Callable[[], Any]:
    """One forward and backward pass per step over the batch's points of that step (``points`` is
    ``(steps, N, ...)``, built beforehand): the model's share of a method whose every step needs the last one's
    gradient, as Guided IG's does."""
    steps = [p.detach().requires_grad_() for p in points]

    def floor():
        for z in steps:
            (grad,) = torch.autograd.grad(model(z).gather(1, targets[:, None]).sum(), z)
        return grad

    return floor


# --------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """A timed comparison. ``make(dtype, n)`` builds the calls on ``n`` examples in ``dtype``: a dict of
    zero-argument callables, ``"peer"`` and ``"integrad"`` first, then extras (a floor, a second peer)."""

    name: str
    description: str
    peer: str
    make: Callable[[torch.dtype, int], dict[str, Callable[[], Any]]]
    examples: int
    quick_examples: int
    check_examples: int
    #: The tests' tolerance for the float64 agreement: ``|a − b| ≤ rtol |b| + atol_rel · max |b|``.
    rtol: float
    atol_rel: float
    #: Goals ``(side, kind, threshold)`` on integrad's time against a side: kind "speedup" is ``side / integrad``
    #: at least the threshold, "ratio" is ``integrad / side`` at most the threshold.
    goals: list[tuple[str, str, float]] = field(default_factory=list)
    #: Extras compared with the peer as well, with their own (rtol, atol_rel).
    compared_extras: dict[str, tuple[float, float]] = field(default_factory=dict)
    budget_s: float = 20.0
    quick_budget_s: float = 3.0
    min_rounds: int = 6
    settle_s: float = 3.0


def blur_settings() -> dict[str, Any]:
    return {"max_sigma": 50.0, "steps": 100, "grad_step": 0.01, "sqrt": False}


def blur_calls(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Blur IG with saliency's defaults. The peer runs with ``batch_size = steps`` (its fastest, the same sum) and
    with its default ``batch_size=1`` (one model call per blur level)."""
    from integrad.methods.blur import BlurIntegratedGradients, gaussian_blur, sigma_grid

    s = blur_settings()
    explainer = BlurIntegratedGradients(model)
    levels = torch.from_numpy(sigma_grid(s["max_sigma"], s["steps"], s["sqrt"])[: s["steps"]])
    rows = images.repeat_interleave(len(levels), 0)
    points = gaussian_blur(rows, levels.repeat(images.shape[0]))[0].to(images.dtype)
    return {
        "peer": lambda: saliency_blur(model, images, targets, batch_size=s["steps"], **s),
        "integrad": lambda: explainer.attribute(
            images, target=targets, max_sigma=s["max_sigma"], n_steps=s["steps"], grad_step=s["grad_step"]
        ),
        "floor": gradient_floor(model, points, targets.repeat_interleave(len(levels))),
        "peer_batch_size_1": lambda: saliency_blur(model, images, targets, batch_size=1, **s),
    }


def build_blur_digits() -> Workload:
    def make(dtype, n):
        images, targets = digits().explained(n, dtype)
        return blur_calls(as_dtype(digits().model, dtype), images, targets)

    return Workload(
        "blur_digits",
        "Blur IG, digits CNN (trained), 1x8x8 images, max_sigma=50, 100 steps, grad_step=0.01",
        "saliency BlurIG().GetMask per image, batch_size=100",
        make,
        examples=16,
        quick_examples=4,
        check_examples=4,
        rtol=0.0,
        atol_rel=1e-9,
        goals=[("peer", "speedup", 10.0), ("peer_batch_size_1", "speedup", 10.0)],
        budget_s=20.0,
    )


def build_blur_large() -> Workload:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = W.make_cnn3(64).eval()
        images = torch.rand(16, 3, 64, 64)
    targets = torch.arange(16) % 10

    def make(dtype, n):
        return blur_calls(as_dtype(model, dtype), images[:n].to(dtype), targets[:n])

    return Workload(
        "blur_large",
        "Blur IG, 3-conv CNN (16/32/64 ch) on 3x64x64 images, max_sigma=50, 100 steps",
        "saliency BlurIG().GetMask per image, batch_size=100",
        make,
        examples=4,
        quick_examples=2,
        check_examples=1,
        rtol=0.0,
        atol_rel=1e-9,
        goals=[("peer", "speedup", 10.0), ("peer_batch_size_1", "speedup", 10.0)],
        budget_s=10.0,
        min_rounds=2,
        settle_s=0.0,
    )


def build_guided_digits() -> Workload:
    from integrad.methods.guided import GuidedIntegratedGradients

    settings = {"x_steps": 200, "fraction": 0.25, "max_dist": 0.02}

    def make(dtype, n):
        model = as_dtype(digits().model, dtype)
        images, targets = digits().explained(n, dtype)
        baselines = torch.zeros_like(images)
        explainer = GuidedIntegratedGradients(model)
        alphas = torch.arange(settings["x_steps"], dtype=dtype) / settings["x_steps"]
        points = alphas.view(-1, 1, 1, 1, 1) * images.unsqueeze(0)
        return {
            "peer": lambda: saliency_guided(model, images, baselines, targets, **settings),
            "integrad": lambda: explainer.attribute(
                images,
                baselines,
                target=targets,
                n_steps=settings["x_steps"],
                fraction=settings["fraction"],
                max_dist=settings["max_dist"],
            ),
            "floor": stepwise_floor(model, points, targets),
        }

    return Workload(
        "guided_digits",
        "Guided IG, digits CNN (trained), black baseline, 200 steps, fraction=0.25, max_dist=0.02",
        "saliency GuidedIG().GetMask per image",
        make,
        examples=16,
        quick_examples=8,
        check_examples=4,
        rtol=0.0,
        atol_rel=1e-8,
        goals=[("peer", "speedup", 10.0)],
        budget_s=25.0,
        min_rounds=4,
    )


def seeded(call: Callable[[], Any], seed: int = 0) -> Callable[[], Any]:
    """``call`` after seeding torch's and numpy's global generators, as both GradientShaps draw from them."""

    def run():
        torch.manual_seed(seed)
        np.random.seed(seed)
        return call()

    return run


def gradient_shap_calls(model, inputs, baselines, targets) -> dict[str, Callable[[], Any]]:
    import captum.attr as ca

    from integrad.methods.gradient_shap import GradientShap

    ours, theirs = GradientShap(model), ca.GradientShap(model)
    kwargs = {"n_samples": 20, "stdevs": 0.1, "target": targets}
    return {
        "peer": seeded(lambda: theirs.attribute(inputs, baselines, **kwargs)),
        "integrad": seeded(lambda: ours.attribute(inputs, baselines, **kwargs)),
    }


def build_gradient_shap_cnn() -> Workload:
    def make(dtype, n):
        images, targets = digits().explained(n, dtype)
        return gradient_shap_calls(as_dtype(digits().model, dtype), images, digits().background(16, dtype), targets)

    return Workload(
        "gradient_shap_cnn",
        "GradientShap, digits CNN (trained), 16 images, 16 background digits, n_samples=20, stdevs=0.1",
        "captum.attr.GradientShap, same seeds",
        make,
        examples=16,
        quick_examples=16,
        check_examples=4,
        rtol=0.0,
        atol_rel=1e-12,
        goals=[("peer", "ratio", 0.9)],
        budget_s=15.0,
    )


def build_gradient_shap_mlp() -> Workload:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        model = W.make_mlp().eval()
        inputs = torch.rand(16, 784)
        background = 0.2 * torch.rand(16, 784)
    targets = W._targets(16)

    def make(dtype, n):
        return gradient_shap_calls(as_dtype(model, dtype), inputs[:n].to(dtype), background.to(dtype), targets[:n])

    return Workload(
        "gradient_shap_mlp",
        "GradientShap, MLP 784-512-512-10 (ReLU), 16 inputs, 16 background rows, n_samples=20, stdevs=0.1",
        "captum.attr.GradientShap, same seeds",
        make,
        examples=16,
        quick_examples=16,
        check_examples=4,
        rtol=0.0,
        atol_rel=1e-12,
        goals=[("peer", "ratio", 0.9)],
        budget_s=15.0,
    )


def one_position_at_a_time(ig, inputs, baselines, targets, n_steps: int) -> torch.Tensor:
    """Sequential IG by its definition: one IG call per position, from the input with that position alone at its
    baseline, keeping that position's attributions."""
    out = torch.zeros_like(inputs)
    for i in range(inputs.shape[1]):
        start = inputs.clone()
        start[:, i] = baselines[:, i]
        out[:, i] = ig.attribute(inputs, start, target=targets, n_steps=n_steps)[:, i]
    return out


def build_sequential() -> Workload:
    from integrad import IntegratedGradients
    from integrad.methods.sequential import SequentialIntegratedGradients

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = SequenceClassifier().eval()
        inputs = torch.randn(4, 16, 8)
    targets = torch.tensor([0, 1, 2, 0])

    def make(dtype, n):
        m = as_dtype(model, dtype)
        x, base, t = inputs[:n].to(dtype), torch.zeros(n, 16, 8, dtype=dtype), targets[:n]
        loop, together = IntegratedGradients(m), SequentialIntegratedGradients(m)
        return {
            "peer": lambda: one_position_at_a_time(loop, x, base, t, 50),
            "integrad": lambda: together.attribute(x, base, target=t, n_steps=50),
        }

    return Workload(
        "sequential",
        "Sequential IG, 2-layer transformer encoder (width 32), 4 sequences of 16 positions x 8 features, "
        "zero baseline, 50 GL steps",
        "a loop of integrad IntegratedGradients calls, one per position",
        make,
        examples=4,
        quick_examples=4,
        check_examples=4,
        rtol=1e-12,
        atol_rel=1e-14,
        budget_s=15.0,
    )


def build_layer_conductance() -> Workload:
    import captum.attr as ca

    from integrad.methods.conductance import LayerConductance

    def make(dtype, n):
        model = as_dtype(digits().model, dtype)
        images, targets = digits().explained(n, dtype)
        ours, theirs = LayerConductance(model, model[2]), ca.LayerConductance(model, model[2])
        kwargs = {"baselines": torch.zeros_like(images), "target": targets, "n_steps": 50, "method": "gausslegendre"}
        return {
            "peer": lambda: theirs.attribute(images, **kwargs),
            "integrad": lambda: ours.attribute(images, **kwargs),
        }

    return Workload(
        "layer_conductance",
        "LayerConductance of the second conv of the digits CNN (trained), 16 images, black baseline, 50 GL steps",
        "captum.attr.LayerConductance",
        make,
        examples=16,
        quick_examples=16,
        check_examples=4,
        rtol=0.0,
        atol_rel=1e-7,
        budget_s=15.0,
    )


def build_generation() -> Workload:
    import captum.attr as ca

    from integrad.methods.generation import GenerationAttribution
    from integrad.methods.layer import LayerIntegratedGradients

    base_model = small_gpt2()
    generator = torch.Generator().manual_seed(6)
    prompt = torch.randint(1, 96, (12,), generator=generator)
    continuation = torch.randint(1, 96, (12,), generator=generator)
    sequence = torch.cat([prompt, continuation])

    def make(dtype, n):
        model = as_dtype(base_model, dtype)
        generated = continuation[:n]

        def last_position(ids):
            return model(input_ids=ids).logits[:, -1, :]

        ours = GenerationAttribution(model)
        loops = {
            "peer": LayerIntegratedGradients(last_position, model.transformer.wte),
            "captum_loop": ca.LayerIntegratedGradients(last_position, model.transformer.wte),
        }

        def together():
            result = ours.attribute(prompt, generated, baseline_token_id=0, n_steps=50)
            return [result.embedding_attributions[t, : len(prompt) + t] for t in range(len(generated))]

        def loop(explainer):
            return [
                explainer.attribute(sequence[None, : len(prompt) + t], baselines=0, target=token, n_steps=50)[0]
                for t, token in enumerate(generated.tolist())
            ]

        return {
            "peer": lambda: loop(loops["peer"]),
            "integrad": together,
            "captum_loop": lambda: loop(loops["captum_loop"]),
        }

    return Workload(
        "generation",
        "GenerationAttribution, GPT-2 (random weights, 2 layers, width 64), 12 prompt tokens, 12 generated tokens "
        "attributed, logit score, token 0 as the baseline, 50 GL steps",
        "a loop of integrad LayerIntegratedGradients calls, one per generated token (captum's LayerIntegratedGradients "
        "in the same loop shown as well)",
        make,
        examples=12,
        quick_examples=6,
        check_examples=4,
        rtol=0.0,
        atol_rel=1e-9,
        compared_extras={"captum_loop": (0.0, 1e-7)},
        budget_s=15.0,
    )


BUILDERS: dict[str, Callable[[], Workload]] = {
    "blur_digits": build_blur_digits,
    "blur_large": build_blur_large,
    "guided_digits": build_guided_digits,
    "gradient_shap_cnn": build_gradient_shap_cnn,
    "gradient_shap_mlp": build_gradient_shap_mlp,
    "sequential": build_sequential,
    "layer_conductance": build_layer_conductance,
    "generation": build_generation,
}

# --------------------------------------------------------------------------- timing


def agreement(workload: Workload, calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Each compared side's result against the peer's, at the workload's tolerance."""
    results = {name: calls[name]() for name in ["peer", "integrad", *workload.compared_extras]}
    tolerances = {"integrad": (workload.rtol, workload.atol_rel), **workload.compared_extras}
    return {
        name: W.compare(results[name], results["peer"], rtol, atol_rel) for name, (rtol, atol_rel) in tolerances.items()
    }


def ratio_summary(numerator: np.ndarray, denominator: np.ndarray) -> dict[str, float]:
    """Median and quartiles of per-round ratios, and the ratio of the fastest calls (least affected by load)."""
    r = numerator / denominator
    return {
        "median": float(np.median(r)),
        "q25": float(np.quantile(r, 0.25)),
        "q75": float(np.quantile(r, 0.75)),
        "best_ratio": float(numerator.min() / denominator.min()),
    }


def settle(call: Callable[[], Any], seconds: float, most: int = 32) -> int:
    """Untimed integrad calls in which its chunk-size tuning settles (up to ``most`` calls or ``seconds``)."""
    t0, done = time.perf_counter(), 0
    while done < most and time.perf_counter() - t0 < seconds:
        call()
        done += 1
    return done


def time_rounds(calls: dict[str, Callable[[], Any]], budget_s: float, min_rounds: int) -> dict[str, Any]:
    """Rounds in alternating order (peer first, then last), until ``budget_s`` is spent and at least ``min_rounds``
    are done (or three budgets); per-round ratios of every side to the peer and of integrad to every side."""
    timeit = R.make_timer(torch.device("cpu"))
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds, t0 = 0, time.perf_counter()
    before = R.loadavg()
    # At least one pair of rounds; more until the budget is spent and min_rounds are done, unless a busy machine
    # has stretched the calls past three budgets.
    while rounds < 2 or (
        rounds < 400
        and (time.perf_counter() - t0 < budget_s or (rounds < min_rounds and time.perf_counter() - t0 < 3 * budget_s))
    ):
        for order in (names, names[::-1]):
            for n in order:
                times[n].append(timeit(calls[n], 1)[0])
            rounds += 1
    t = {n: np.asarray(v) for n, v in times.items()}
    return {
        "rounds": rounds,
        "loadavg_before": before,
        "loadavg_after": R.loadavg(),
        "median_s": {n: float(np.median(v)) for n, v in t.items()},
        "min_s": {n: float(np.min(v)) for n, v in t.items()},
        "ratios": {n: ratio_summary(t[n], t["peer"]) for n in names if n != "peer"},
        "integrad_over": {n: ratio_summary(t["integrad"], t[n]) for n in names if n != "integrad"},
    }


def judge(workload: Workload, res: dict[str, Any]) -> list[dict[str, Any]]:
    """The workload's goals on the median per-round ratio; a goal also needs the float64 agreement."""
    agree = res["agreement"]["integrad"]["allclose"]
    checks = []
    for side, kind, threshold in workload.goals:
        ratio = res["integrad_over"][side]["median"]
        if kind == "speedup":
            target, value, met = f"{side} / integrad time >= {threshold:g}", 1.0 / ratio, 1.0 / ratio >= threshold
        else:
            target, value, met = f"integrad / {side} time <= {threshold:g}", ratio, ratio <= threshold
        checks.append({"target": target, "value": value, "threshold": threshold, "pass": bool(met and agree)})
    return checks


def run_workload(workload: Workload, quick: bool) -> dict[str, Any]:
    n = workload.quick_examples if quick else workload.examples
    res: dict[str, Any] = {"description": workload.description, "peer": workload.peer, "examples": n}
    res["agreement"] = agreement(workload, workload.make(torch.float64, min(workload.check_examples, n)))
    res["agreement_examples"] = min(workload.check_examples, n)
    calls = workload.make(torch.float32, n)
    warm = {name: call() for name, call in calls.items()}
    res["float32_max_rel_diff"] = W.compare(warm["integrad"], warm["peer"])["max_rel_diff"]
    del warm
    res["settling_calls"] = settle(calls["integrad"], 1.0 if quick else workload.settle_s)
    budget = workload.quick_budget_s if quick else workload.budget_s
    res.update(time_rounds(calls, budget, 2 if quick else workload.min_rounds))
    res["goals"] = judge(workload, res)
    return res


# --------------------------------------------------------------------------- Expected Gradients study


def relative_l1(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over examples of ``‖A − R‖₁ / ‖R‖₁``."""
    diff = (estimate - reference).flatten(1).abs().sum(1)
    return float((diff / reference.flatten(1).abs().sum(1)).mean())


def power_law(rows: list[int], errors: list[float]) -> tuple[float, float]:
    """``(a, b)`` of the least-squares fit ``log error = a + b log rows`` (``b`` about −1/2 for sampling)."""
    slope, intercept = np.polyfit(np.log(rows), np.log(errors), 1)
    return float(intercept), float(slope)


def run_expected_gradients(quick: bool) -> dict[str, Any]:
    """Deterministic (GL along every example-background line) and random (sampled background row and α) Expected
    Gradients against a deterministic reference with many points, all in float64."""
    from integrad.methods.expected_gradients import ExpectedGradients

    model = as_dtype(digits().model, torch.float64)
    inputs, targets = digits().explained(8, torch.float64)
    background = digits().background(32, torch.float64)
    m, b = background.shape[0], inputs.shape[0]
    explainer = ExpectedGradients(model)
    reference_steps = 128 if quick else 256
    reference = explainer.attribute(inputs, background, target=targets, n_samples=m, n_steps=reference_steps)
    coarser = explainer.attribute(inputs, background, target=targets, n_samples=m, n_steps=reference_steps // 2)
    steps = [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32]
    sweep = [(32, 3), (128, 3), (512, 2)] if quick else [(32, 5), (128, 5), (512, 4), (2048, 3), (8192, 2)]
    deterministic = []
    for k in steps:
        t0 = time.perf_counter()
        estimate = explainer.attribute(inputs, background, target=targets, n_samples=m, n_steps=k)
        seconds = time.perf_counter() - t0
        deterministic.append({"n_steps": k, "rows": b * m * k, "error": relative_l1(estimate, reference), "s": seconds})
    random = []
    for n_samples, seeds in sweep:
        errors, seconds = [], []
        for seed in range(seeds):
            generator = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            estimate = explainer.attribute(inputs, background, target=targets, n_samples=n_samples, generator=generator)
            seconds.append(time.perf_counter() - t0)
            errors.append(relative_l1(estimate, reference))
        # The root mean square over seeds: the estimator's typical error, not one lucky draw's.
        rms = float(np.sqrt(np.mean(np.square(errors))))
        random.append({"n_samples": n_samples, "rows": b * n_samples, "error": rms, "seeds": seeds})
        random[-1]["s"] = float(np.median(seconds))
    intercept, slope = power_law([r["rows"] for r in random], [r["error"] for r in random])
    # The largest sample's time per row: the least diluted by the per-call overhead.
    seconds_per_row = random[-1]["s"] / random[-1]["rows"]
    smallest, largest = min(r["error"] for r in random), max(r["error"] for r in random)
    for d in deterministic:
        rows = math.exp((math.log(d["error"]) - intercept) / slope)
        d["random_rows_at_same_error"] = rows
        d["rows_ratio_random_over_deterministic"] = rows / d["rows"]
        d["time_ratio_random_over_deterministic"] = rows * seconds_per_row / d["s"]
        d["extrapolated"] = not smallest <= d["error"] <= largest
    return {
        "description": "Expected Gradients, digits CNN (trained), 8 images, background of 32 digits, float64; "
        f"reference: deterministic GL with {reference_steps} points per line",
        "background_rows": m,
        "examples": b,
        "reference_steps": reference_steps,
        # How far the reference itself may be off: the error of the rule with half its points.
        "reference_uncertainty": relative_l1(coarser, reference),
        "deterministic": deterministic,
        "random": random,
        "random_error_slope": slope,
        "random_seconds_per_row": seconds_per_row,
    }


# --------------------------------------------------------------------------- report


def print_result(name: str, res: dict[str, Any]) -> None:
    if "error" in res:
        log(f"  ERROR: {res['error']}")
        return
    if name == "expected_gradients":
        for d in res["deterministic"]:
            log(
                f"  deterministic n_steps={d['n_steps']}: {d['rows']} rows, error {d['error']:.2e}, "
                f"random needs {d['random_rows_at_same_error']:.3g} rows "
                f"({d['rows_ratio_random_over_deterministic']:.3g}x, "
                f"time {d['time_ratio_random_over_deterministic']:.3g}x)"
                + (" (extrapolated)" if d["extrapolated"] else "")
            )
        for r in res["random"]:
            log(
                f"  random n_samples={r['n_samples']}: {r['rows']} rows, "
                f"rms error {r['error']:.2e} ({r['seeds']} seeds)"
            )
        log(f"  random error ~ rows^{res['random_error_slope']:.3f}")
        return
    unit = lambda s: f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"  # noqa: E731
    log(
        "  median time: "
        + ", ".join(f"{k} {unit(v)}" for k, v in res["median_s"].items())
        + f" ({res['rounds']} rounds)"
    )
    for k, r in res["integrad_over"].items():
        log(
            f"  integrad / {k}: {r['median']:.4g} [{r['q25']:.4g}-{r['q75']:.4g}], "
            f"best-time ratio {r['best_ratio']:.4g}"
        )
    for k, a in res["agreement"].items():
        log(f"  agreement {k} vs peer (float64): allclose={a['allclose']} max rel diff {a['max_rel_diff']:.3g}")
    log(f"  float32 max rel diff {res['float32_max_rel_diff']:.3g}")
    for g in res["goals"]:
        log(f"  goal {g['target']}: {g['value']:.3g} -> {'pass' if g['pass'] else 'FAIL'}")


def _seconds(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"Machine: {m['cpu_model']} ({m['logical_cpus']} logical CPUs), torch threads {m['torch_threads']}, "
        f"torch {m['torch']}, captum {m['captum']}, saliency {m.get('saliency')}, transformers "
        f"{m.get('transformers')}, integrad {m['integrad']} (source digest {m.get('integrad_source_digest')}), "
        f"Python {m['python']}."
    )


def timed_rows(report: dict[str, Any]) -> list[str]:
    rows = []
    for name, res in report["workloads"].items():
        if name == "expected_gradients":
            continue
        if "error" in res:
            rows.append(f"| {name} | error: {res['error'].splitlines()[0]} | | | | | | | | FAIL |")
            continue
        r = res["ratios"]["integrad"]
        a = res["agreement"]["integrad"]
        extras = "; ".join(
            f"integrad / {k} {v['median']:.3f} ({_seconds(res['median_s'][k])})"
            for k, v in res["integrad_over"].items()
            if k != "peer"
        )
        goals = "; ".join(f"{g['target']}: {g['value']:.2f}, {'pass' if g['pass'] else 'FAIL'}" for g in res["goals"])
        rows.append(
            f"| {name} | {res['peer']} | {_seconds(res['median_s']['peer'])} | {_seconds(res['median_s']['integrad'])} "
            f"| {r['median']:.3f} [{r['q25']:.3f}-{r['q75']:.3f}] | {1 / r['median']:.1f}x | {r['best_ratio']:.3f} "
            f"| {'yes' if a['allclose'] else 'NO'} ({a['max_rel_diff']:.1e}) | {extras} "
            f"| {goals or 'reported'} |"
        )
    return rows


def expected_gradients_rows(res: dict[str, Any]) -> list[str]:
    rows = []
    for d in res["deterministic"]:
        rows.append(
            f"| n_steps={d['n_steps']} | {d['rows']} | {d['error']:.2e} | {_seconds(d['s'])} "
            f"| {d['random_rows_at_same_error']:.3g}{' (extrapolated)' if d['extrapolated'] else ''} "
            f"| {d['rows_ratio_random_over_deterministic']:.3g} | {d['time_ratio_random_over_deterministic']:.3g} |"
        )
    return rows


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    loads = [v for res in report["workloads"].values() for k, v in res.items() if k.startswith("loadavg") and v]
    lines = [
        "## Integrated-gradients variants against their peers",
        "",
        "Generated by `python -m benchmarks.variants" + (" --quick" if report["quick"] else "") + "`.",
        "",
        machine_line(m),
    ]
    if loads:
        lines += ["", f"1-minute load average during the timed rounds: {min(loads):.1f} to {max(loads):.1f}."]
    lines += [
        "",
        "Method: integrad and its peer run in one process on the same model, inputs and settings, in float32; both "
        "are warmed up (and integrad's chunk-size tuning is given a few untimed calls), then timed in rounds whose "
        "order alternates (peer, integrad, extras; then the reverse). Ratios are medians of per-round ratios, "
        "interquartile range in brackets; the best-time ratio is fastest integrad call / fastest peer call. "
        "Agreement: the same call on a float64 copy of the model, on the first examples, at the tolerance the tests "
        "use (`|a - b| <= rtol |b| + atol * max |b|`; largest difference relative to the peer's largest magnitude in "
        "brackets). *floor* = one forward + backward, in one batch, over the method's path points built "
        "beforehand: the model's share of the work, which no implementation avoids, so peer / floor is about the "
        "largest speed-up possible (a chunked evaluation can beat the one-batch floor a little). For Guided IG, "
        "whose every step needs the gradient at the last one, the floor is one pass per step over the batch. "
        "*peer_batch_size_1* = saliency at its default `batch_size=1`, one model call per blur level."
        + (" `--quick`: fewer examples and rounds; indicative only." if report["quick"] else ""),
        "",
        "| workload | peer | peer time | integrad time | integrad / peer | speed-up | best-time ratio "
        "| agrees (float64) | integrad against the other sides | goals |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *timed_rows(report),
        "",
        "Workloads:",
        "",
    ]
    for name, res in report["workloads"].items():
        if "description" in res:
            lines.append(
                f"* `{name}`: {res['description']}"
                + (f"; {res['examples']} examples" if "examples" in res and name != "expected_gradients" else "")
                + "."
            )
    eg = report["workloads"].get("expected_gradients")
    if eg and "deterministic" in eg:
        lines += [
            "",
            "### Expected Gradients: deterministic against random mode",
            "",
            f"{eg['description']} (its error, judged by the same rule with half the points: "
            f"{eg['reference_uncertainty']:.1e}). Error = mean over examples of the relative L1 error against the "
            "reference. "
            f"Random mode (`n_steps=None`): root mean square of the error over seeds, fitted as error ~ "
            f"rows^{eg['random_error_slope']:.2f} over n_samples "
            + ", ".join(str(r["n_samples"]) for r in eg["random"])
            + f"; deterministic mode (`n_steps=k`, all {eg['background_rows']} background rows): "
            "rows = examples x background rows x k. 'Random rows at same error' reads the fit at the deterministic "
            "error (extrapolated where outside the sweep's errors); the time ratio uses random mode's measured time "
            "per row.",
            "",
            "| deterministic | rows | error | time | random rows at same error | rows random / deterministic "
            "| time random / deterministic |",
            "|---|---|---|---|---|---|---|",
            *expected_gradients_rows(eg),
            "",
            "| random n_samples | rows | rms error | seeds | time |",
            "|---|---|---|---|---|",
            *(
                f"| {r['n_samples']} | {r['rows']} | {r['error']:.2e} | {r['seeds']} | {_seconds(r['s'])} |"
                for r in eg["random"]
            ),
        ]
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def machine(threads: int) -> dict[str, Any]:
    info = R.machine_info(threads, "cpu")
    from importlib.metadata import version

    for package in ("saliency", "transformers"):
        try:
            info[package] = version(package)
        except Exception:
            info[package] = None
    d = digits()
    info["digits_cnn_held_out_accuracy"] = d.accuracy
    info["digits_cnn_train_s"] = d.train_s
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer examples and rounds (under a minute)")
    p.add_argument("--only", default=None, help="comma-separated workload names: " + ", ".join(ORDER))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--out", default=None, help="write the full results as JSON here")
    p.add_argument("--markdown", default=None, help="write the results as a markdown section here")
    args = p.parse_args(argv)
    names = [n for n in ORDER if not (args.quick and n in FULL_ONLY)]
    if args.only is not None:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [n for n in names if n not in ORDER]
        if unknown:
            p.error(f"--only: unknown workload(s) {unknown}; choose from {ORDER}")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"quick": args.quick, "machine": machine(args.threads), "workloads": {}}
    log(f"machine: {json.dumps(report['machine'])}")
    t_start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        log(f"\n== {name}")
        try:
            if name == "expected_gradients":
                res = run_expected_gradients(args.quick)
            else:
                workload = BUILDERS[name]()
                log(f"  {workload.description}")
                res = run_workload(workload, args.quick)
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            log(res["traceback"])
        res["wall_s"] = time.perf_counter() - t0
        report["workloads"][name] = res
        print_result(name, res)
        log(f"  ({res['wall_s']:.1f} s)")
    report["total_s"] = time.perf_counter() - t_start
    log(f"\ntotal {report['total_s']:.1f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
        log(f"wrote {args.out}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(markdown(report))
        log(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
