"""Quantitative quality metrics for feature attributions.

Every metric shares one signature::

    metric(model, inputs, attributions, targets=None, **options) -> Tensor[N]

and returns one floating-point score per example.  Each metric function carries
a boolean ``higher_is_better`` attribute, and :data:`METRICS` maps metric names
to the functions, so that explanations can be compared and tuned generically::

    for name, metric in METRICS.items():
        score = metric(model, x, attributions, targets, baselines=0.0, seed=0)
        better = score.mean() if metric.higher_is_better else -score.mean()

Conventions shared by all metrics
---------------------------------
inputs
    A tensor ``(N, ...)`` or a tuple of tensors (multi-input models), called as
    ``model(*inputs)``.  With ``forward_arg_extractor`` set, ``inputs`` is a whole
    batch (for example ``(input_ids, attention_mask, label)``):
    ``forward_arg_extractor(batch)`` returns the tensor(s) the attributions refer
    to and ``additional_forward_arg_extractor(batch)`` what is only passed along,
    giving ``model(*attributed, *additional)``.  A tuple returned by the
    additional extractor is unpacked into positional arguments; a tensor is
    passed as one argument.  When inputs are perturbed, every additional tensor
    whose first dimension is ``N`` is repeated alongside its example.
attributions
    Tensor (or tuple matching the attributed inputs) with the inputs' shapes.
    Metrics that only remove features (``completeness_error``, ``mu_fidelity``,
    ``morf``, ``lerf``, ``abpc``, grouped ``complexity``) also accept attributions
    with extra trailing dimensions, such as layer attributions ``(N, L, E)`` for
    token ids ``(N, L)``; the trailing dimensions are summed.
targets
    ``LongTensor[N]`` (one class index per example) selecting column
    ``targets[n]`` of ``(N, C)`` outputs, or ``None`` for models returning one
    scalar per example (``(N,)`` or ``(N, 1)``).  The other forms the
    attribution methods take for one index per example are accepted too: an
    int or a 0-d tensor (the same class for every example), a list of ``N``
    ints, an ``(N, 1)`` tensor.
baselines
    The reference input ``x'``: ``None`` (zeros), a Python number, a tensor
    broadcastable to the input shape, or a tuple of those (one per input).
seed
    All randomness is drawn from a local :class:`torch.Generator` seeded with
    ``seed``; results are deterministic given ``seed`` and independent of
    ``batch_size``, and the global RNG state is never read or advanced.
    ``seed=None`` seeds the local generator non-deterministically.
batch_size
    Maximum number of rows per model forward (and per explainer call) for the
    perturbed evaluations; ``None`` evaluates all rows of a metric at once.

All model forwards run under :func:`torch.no_grad`; neither the model (mode,
parameters, ``requires_grad``, batch-norm statistics) nor any input tensor is
modified.  A model in training mode with dropout or batch norm gets a
RuntimeWarning: its outputs, and so the scores, are random or depend on the batch.  The options
``baselines``, ``seed``, ``batch_size``, ``explainer`` and the two extractors are
accepted by every metric (ignored where unused), so one option set can be passed
to all metrics in :data:`METRICS`.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..arguments import (
    check_bool,
    check_choice,
    check_n_steps,
    check_positive,
    check_positive_int,
    is_int,
    is_real,
    model_output,
    normalize_inputs,
    normalize_target,
)
from ..methods.base import restore_training_state, training_state_saved

__all__ = [
    "METRICS",
    "abpc",
    "completeness_error",
    "complexity",
    "infidelity",
    "lerf",
    "morf",
    "mu_fidelity",
    "sensitivity_max",
]

METRICS: dict[str, Callable[..., Tensor]] = {}

_COMMON_OPTIONS = (
    "baselines",
    "seed",
    "batch_size",
    "explainer",
    "forward_arg_extractor",
    "additional_forward_arg_extractor",
)
_KW = inspect.Parameter.KEYWORD_ONLY
_POS = inspect.Parameter.POSITIONAL_OR_KEYWORD


def _metric(higher_is_better: bool, evaluates: str | None = "model"):
    """Turn ``core(ctx, attributions, **own_options)`` into a public metric.

    The public function takes ``(model, inputs, attributions, targets=None, **options)``: the
    core's own keyword options followed by :data:`_COMMON_OPTIONS`.  It rejects unknown options
    by name, validates the model call once (``evaluates`` is ``"model"``, ``"explainer"`` or
    ``None`` for metrics that never evaluate anything), attaches ``higher_is_better`` and
    registers the metric in :data:`METRICS`.
    """

    def decorate(core: Callable[..., Tensor]) -> Callable[..., Tensor]:
        name = core.__name__
        own = [p for p in inspect.signature(core).parameters.values() if p.kind is _KW]
        accepted = [p.name for p in own] + list(_COMMON_OPTIONS)

        @functools.wraps(core)
        def wrapper(model, inputs, attributions, targets=None, **options):
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise TypeError(
                    f"{name}() got unknown option(s) {', '.join(map(repr, unknown))}; "
                    f"accepted options: {', '.join(accepted)}"
                )
            common = {key: options.pop(key, None) for key in _COMMON_OPTIONS}
            if evaluates == "explainer":
                _check_explainer(common["explainer"])
            saved = training_state_saved(model if evaluates == "model" else None, "model", stacklevel=2)
            try:
                ctx = _prepare(name, model if evaluates == "model" else None, inputs, targets, **common)
                return core(ctx, attributions, **options)
            finally:
                restore_training_state(saved)

        wrapper.__signature__ = inspect.Signature(
            [inspect.Parameter(p, _POS) for p in ("model", "inputs", "attributions")]
            + [inspect.Parameter("targets", _POS, default=None)]
            + own
            + [inspect.Parameter(key, _KW, default=None) for key in _COMMON_OPTIONS]
        )
        wrapper.higher_is_better = higher_is_better
        METRICS[name] = wrapper
        return wrapper

    return decorate


# --------------------------------------------------------------------------- validation


def _checked(metric: str, check: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, a check of :mod:`integrad.arguments`, with the metric's name put before its error."""
    try:
        return check(*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{metric}: {error}") from None


def _check_optional_bool(metric: str, name: str, value: Any, none_means: str) -> bool | None:
    if value is None:
        return None
    try:
        return check_bool(name, value)
    except TypeError as error:
        raise TypeError(f"{metric}: {error} (or None, which {none_means})") from None


def _check_explainer(explainer: Any) -> None:
    if explainer is None:
        raise TypeError(
            "sensitivity_max requires explainer=: an object with .attribute(inputs, targets), "
            "e.g. integrad.explainers.IntegratedGradients(model)"
        )
    if not callable(getattr(explainer, "attribute", None)):
        raise TypeError(
            "sensitivity_max: explainer must have a callable .attribute(inputs, targets); "
            f"got {type(explainer).__name__}"
        )


def _is_int_tensor(value: Any) -> bool:
    return isinstance(value, Tensor) and not (
        value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool
    )


def _check_broadcast(metric: str, name: str, value: Tensor, x: Tensor) -> None:
    try:
        shape = torch.broadcast_shapes(value.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"{metric}: {name} must be broadcastable to the input shape {tuple(x.shape)}; "
            f"got shape {tuple(value.shape)}"
        )


def _per_input(ctx: _Context, name: str, value: Any, accepted: str, single: tuple[type, ...]) -> list[Any]:
    """One entry of a per-input option for each attributed input.

    ``None`` and values of the ``single`` types serve every input (a tensor only a single
    input); a tuple or list must hold one entry per input.
    """
    if value is None or isinstance(value, single):
        if isinstance(value, Tensor) and len(ctx.xs) > 1:
            raise ValueError(
                f"{ctx.metric}: {name} for {len(ctx.xs)} inputs must be a tuple (one entry per input); "
                f"accepted: {accepted}"
            )
        return [value] * len(ctx.xs)
    if isinstance(value, (tuple, list)):
        if len(value) != len(ctx.xs):
            raise ValueError(
                f"{ctx.metric}: {name} must have one entry per attributed input ({len(ctx.xs)}); "
                f"got {len(value)}. Accepted: {accepted}"
            )
        return list(value)
    raise TypeError(f"{ctx.metric}: {name} must be {accepted}; got {type(value).__name__}")


@dataclass
class _Context:
    """Validated model call: attributed tensors, pass-along arguments, targets and common options."""

    metric: str
    model: Callable[..., Any]
    raw: Any  # the inputs exactly as given (a whole batch with extractors)
    xs: tuple[Tensor, ...]  # attributed inputs
    was_tuple: bool
    extra: tuple[Any, ...]  # additional forward arguments
    n: int
    targets: Tensor | None
    batch_size: int | None
    extracted: bool
    baselines: Any  # the baselines option as given; see _baselines
    seed: int | None
    explainer: Any

    def generator(self) -> torch.Generator:
        # A private CPU generator keeps results reproducible across devices and leaves the
        # global RNG untouched; seed() draws from the OS, not from torch's global state.
        gen = torch.Generator(device="cpu")
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen


def _as_tensor_tuple(metric: str, name: str, value: Any) -> tuple[tuple[Tensor, ...], bool]:
    if isinstance(value, Tensor):
        return (value,), False
    if isinstance(value, (tuple, list)) and len(value) > 0 and all(isinstance(v, Tensor) for v in value):
        return tuple(value), True
    raise TypeError(f"{metric}: {name} must be a tensor or a non-empty tuple of tensors; got {type(value).__name__}")


def _prepare(
    metric: str,
    model: Any,
    inputs: Any,
    targets: Any,
    *,
    baselines: Any,
    seed: Any,
    batch_size: Any,
    explainer: Any,
    forward_arg_extractor: Any,
    additional_forward_arg_extractor: Any,
) -> _Context:
    """Validate the model call and the common options; ``model=None`` skips the model check."""
    _check_callables(metric, model, forward_arg_extractor, additional_forward_arg_extractor)
    batch_size = _checked(metric, check_positive_int, "batch_size", batch_size)
    if seed is not None and not is_int(seed):
        raise TypeError(f"{metric}: seed must be an int or None; got {seed!r}")
    xs, was_tuple = _attributed_inputs(metric, inputs, forward_arg_extractor)
    extra = None if additional_forward_arg_extractor is None else additional_forward_arg_extractor(inputs)
    extra = () if extra is None else tuple(extra) if isinstance(extra, (tuple, list)) else (extra,)
    n = xs[0].shape[0]
    return _Context(
        metric,
        model,
        inputs,
        xs,
        was_tuple,
        extra,
        n,
        _check_targets(metric, targets, n, xs[0].device),
        batch_size,
        forward_arg_extractor is not None,
        baselines,
        None if seed is None else int(seed),
        explainer,
    )


def _check_callables(metric: str, model: Any, forward_extractor: Any, additional_extractor: Any) -> None:
    if model is not None and not callable(model):
        raise TypeError(f"{metric}: model must be callable (an nn.Module or function); got {type(model).__name__}")
    for name, fn in (
        ("forward_arg_extractor", forward_extractor),
        ("additional_forward_arg_extractor", additional_extractor),
    ):
        if fn is not None and not callable(fn):
            raise TypeError(f"{metric}: {name} must be a callable batch -> tensor(s) or None; got {type(fn).__name__}")


def _attributed_inputs(metric: str, inputs: Any, forward_extractor: Any) -> tuple[tuple[Tensor, ...], bool]:
    """The tensors the attributions refer to (checked as the attribution methods check theirs), and whether they came
    as a tuple (a list counts as one)."""
    name, picked = "inputs", inputs
    if forward_extractor is not None:
        name, picked = "forward_arg_extractor(inputs)", forward_extractor(inputs)
    picked = tuple(picked) if isinstance(picked, list) else picked
    try:
        # Integer inputs (token ids) are fine for the metrics that only remove features; those that add noise ask
        # for floating point themselves.
        return normalize_inputs(picked, name=name, need_grad=False)
    except (TypeError, ValueError) as error:
        hint = " (forward_arg_extractor must return a tensor or a tuple of tensors)" if forward_extractor else ""
        raise type(error)(f"{metric}: {error}{hint}") from None


def _check_targets(metric: str, targets: Any, n: int, device: torch.device) -> Tensor | None:
    """Targets as a LongTensor ``(N,)`` of class indices (one column of ``(N, C)`` outputs per example), or None."""
    # A list is one entry per example for the metrics, as it is for the attribution methods.
    targets = _checked(metric, normalize_target, targets, n, device)
    if targets is None:
        return None
    if targets.shape[1] != 1:
        raise ValueError(
            f"{metric}: targets must select one column of (N, C) outputs per example: an int, a list of N ints or a "
            f"LongTensor of shape (N,) = ({n},); got {targets.shape[1]} indices per example (a tuple of ints indexes "
            "one entry of an output with more dimensions, which the metrics do not score)"
        )
    if (targets < 0).any():
        raise ValueError(f"{metric}: targets must be non-negative class indices; got {int(targets.min())}")
    return targets[:, 0]


def _attributions(ctx: _Context, attributions: Any, mode: str) -> tuple[Tensor, ...]:
    """Validate attributions against the attributed inputs.

    mode ``"equal"``: same shapes; ``"reducible"``: same shapes after summing extra
    trailing dimensions (returned reduced); ``"leading"``: batch dimension only.
    """
    attrs, _ = _as_tensor_tuple(ctx.metric, "attributions", attributions)
    for a in attrs:
        if not a.dtype.is_floating_point:
            raise TypeError(f"{ctx.metric}: attributions must be floating-point tensors; got {a.dtype}")
    if mode == "leading":
        bad = [tuple(a.shape) for a in attrs if a.dim() == 0 or a.shape[0] != ctx.n]
        if bad:
            raise ValueError(
                f"{ctx.metric}: attributions must have the inputs' batch size N = {ctx.n} as first dimension; "
                f"got shapes {[tuple(a.shape) for a in attrs]}"
            )
        return attrs
    if len(attrs) != len(ctx.xs):
        raise ValueError(
            f"{ctx.metric}: attributions must have one tensor per attributed input ({len(ctx.xs)}); got {len(attrs)}"
        )
    out = []
    for a, x in zip(attrs, ctx.xs):
        if a.shape == x.shape:
            out.append(a.detach())
        elif mode == "reducible" and a.dim() > x.dim() and a.shape[: x.dim()] == x.shape:
            out.append(a.detach().sum(dim=tuple(range(x.dim(), a.dim()))))
        else:
            accepted = (
                "the same shape" if mode == "equal" else "the same shape, optionally with extra trailing dimensions"
            )
            raise ValueError(
                f"{ctx.metric}: attributions must have {accepted} as the attributed inputs; "
                f"got attribution shapes {[tuple(t.shape) for t in attrs]} "
                f"for inputs {[tuple(t.shape) for t in ctx.xs]}"
            )
    return tuple(out)


def _require_float_inputs(ctx: _Context, why: str) -> None:
    for k, x in enumerate(ctx.xs):
        if not x.dtype.is_floating_point:
            raise TypeError(
                f"{ctx.metric} {why}, so inputs must be floating-point tensors; got {x.dtype} for input {k}"
            )


def _baselines(ctx: _Context) -> tuple[Tensor, ...]:
    """The ``baselines`` option broadcast (as views) to each attributed input's full shape."""
    accepted = "None (zeros), a number, a tensor broadcastable to the input shape, or a tuple of those (one per input)"
    out = []
    for b, x in zip(_per_input(ctx, "baselines", ctx.baselines, accepted, (numbers.Number, Tensor)), ctx.xs):
        if b is None:
            b = 0
        if isinstance(b, bool) or not isinstance(b, (numbers.Number, Tensor)):
            raise TypeError(f"{ctx.metric}: baselines must be {accepted}; got an entry of type {type(b).__name__}")
        if isinstance(b, numbers.Number):
            out.append(torch.full((), b, dtype=x.dtype, device=x.device).expand(x.shape))
        else:
            _check_broadcast(ctx.metric, "baselines", b, x)
            out.append(b.detach().to(device=x.device, dtype=x.dtype).expand(x.shape))
    return tuple(out)


# --------------------------------------------------------------------------- model evaluation


def _output_tensor(metric: str, out: Any) -> Tensor:
    out = model_output(out)
    if isinstance(out, Tensor):
        return out
    raise TypeError(
        f"{metric}: model must return a tensor (or an object with a .logits tensor); got {type(out).__name__}"
    )


def _select(ctx: _Context, out: Tensor, rows: Tensor, apply_softmax: bool | None) -> Tensor:
    """The scored output of each row: target column (softmaxed if requested) or the scalar."""
    if out.dim() == 0 or out.shape[0] != rows.shape[0]:
        raise ValueError(
            f"{ctx.metric}: model must return one row per input row; got output shape {tuple(out.shape)} "
            f"for {rows.shape[0]} rows"
        )
    if ctx.targets is None:
        if apply_softmax:
            raise ValueError(f"{ctx.metric}: apply_softmax=True needs targets and (N, C) outputs; got targets=None")
        if out.dim() == 1:
            return out
        if out.dim() == 2 and out.shape[1] == 1:
            return out[:, 0]
        raise ValueError(
            f"{ctx.metric}: targets=None needs one scalar output per example, shape (N,) or (N, 1); "
            f"got output shape {tuple(out.shape)}: pass targets (LongTensor[N])"
        )
    if out.dim() != 2:
        raise ValueError(
            f"{ctx.metric}: targets need model outputs of shape (N, C); got output shape {tuple(out.shape)}"
        )
    tgt = ctx.targets[rows]
    if int(tgt.max()) >= out.shape[1]:
        raise ValueError(
            f"{ctx.metric}: targets must be class indices in [0, {out.shape[1] - 1}]; got {int(tgt.max())}"
        )
    if apply_softmax is None:
        apply_softmax = out.shape[1] > 1
    if apply_softmax:
        out = torch.softmax(out, dim=1)
    return out.gather(1, tgt[:, None])[:, 0]


def _repeat_extra(ctx: _Context, rows: Tensor) -> tuple[Any, ...]:
    return tuple(
        e.index_select(0, rows.to(e.device)) if isinstance(e, Tensor) and e.dim() > 0 and e.shape[0] == ctx.n else e
        for e in ctx.extra
    )


def _forward(ctx: _Context, xs: tuple[Tensor, ...], rows: Tensor, apply_softmax: bool | None = False) -> Tensor:
    """Score of ``model(*xs, *extra[rows])`` for every row; ``rows[r]`` is the example of row r."""
    total = rows.shape[0]
    step = total if ctx.batch_size is None else ctx.batch_size
    scores = []
    with torch.no_grad():
        for start in range(0, total, step):
            part = slice(start, start + step)
            sub_rows = rows[part]
            args = tuple(x[part] for x in xs) + _repeat_extra(ctx, sub_rows)
            out = _output_tensor(ctx.metric, ctx.model(*args))
            scores.append(_select(ctx, out.detach(), sub_rows.to(out.device), apply_softmax))
    return torch.cat(scores)


def _tile_rows(ctx: _Context, k: int) -> Tensor:
    """Example index of each row when ``k`` perturbations of all N examples are stacked."""
    device = ctx.xs[0].device
    return torch.arange(ctx.n, device=device).repeat(k)


def _chunk_sizes(ctx: _Context, total: int) -> list[tuple[int, int]]:
    """Split ``total`` perturbations so each chunk has at most ``batch_size`` rows (at least one perturbation)."""
    per = total if ctx.batch_size is None else max(1, ctx.batch_size // ctx.n)
    return [(s, min(total, s + per)) for s in range(0, total, per)]


# --------------------------------------------------------------------------- feature groups


@dataclass
class _Groups:
    """Features for removal: per input an element -> group index map (None = each element a group)."""

    index: list[Tensor | None]  # (1 or N, E_k) long
    sizes: list[int]

    @property
    def total(self) -> int:
        return sum(self.sizes)


def _groups(ctx: _Context, feature_mask: Any, reduce_channels: Any) -> _Groups:
    reduce_channels = _checked(ctx.metric, check_bool, "reduce_channels", reduce_channels)
    accepted = (
        "None, an integer tensor of non-negative group ids broadcastable to the input shape, "
        "or a tuple of those (one per input)"
    )
    index: list[Tensor | None] = []
    sizes: list[int] = []
    for m, x in zip(_per_input(ctx, "feature_mask", feature_mask, accepted, (Tensor,)), ctx.xs):
        per_example = x.shape[1:]
        numel = math.prod(per_example)
        if m is None:
            if reduce_channels and x.dim() == 4:
                # Image (N, C, H, W): a pixel is one feature spanning all its channels.
                c, h, w = per_example
                index.append(torch.arange(h * w, device=x.device).view(1, 1, h, w).expand(1, c, h, w).reshape(1, numel))
                sizes.append(h * w)
            else:
                index.append(None)
                sizes.append(numel)
            continue
        if not _is_int_tensor(m):
            raise TypeError(
                f"{ctx.metric}: feature_mask must be {accepted}; got {getattr(m, 'dtype', type(m).__name__)}"
            )
        _check_broadcast(ctx.metric, "feature_mask", m, x)
        if m.numel() and int(m.min()) < 0:
            raise ValueError(f"{ctx.metric}: feature_mask group ids must be non-negative; got {int(m.min())}")
        full = m.reshape((1,) * (x.dim() - m.dim()) + tuple(m.shape)).to(x.device, torch.long)
        full = full.expand(full.shape[0], *per_example).reshape(full.shape[0], numel)
        index.append(full)
        sizes.append(int(full.max()) + 1 if full.numel() else 0)
    return _Groups(index, sizes)


def _group_attributions(attrs: tuple[Tensor, ...], groups: _Groups) -> Tensor:
    """(N, G): attribution summed within every feature group, inputs concatenated."""
    parts = []
    for a, idx, size in zip(attrs, groups.index, groups.sizes):
        flat = a.reshape(a.shape[0], -1)
        if idx is None:
            parts.append(flat)
        else:
            summed = torch.zeros(flat.shape[0], size, dtype=flat.dtype, device=flat.device)
            parts.append(summed.scatter_add(1, idx.expand(flat.shape[0], -1), flat))
    return torch.cat(parts, dim=1)


def _remove(
    ctx: _Context, base: tuple[Tensor, ...], groups: _Groups, removed: Tensor, rows: Tensor
) -> tuple[Tensor, ...]:
    """Inputs of each row with the features flagged in ``removed`` (R, G) set to the baseline."""
    out = []
    offset = 0
    for x, b, idx, size in zip(ctx.xs, base, groups.index, groups.sizes):
        flags = removed[:, offset : offset + size]
        offset += size
        if idx is None:
            elem = flags
        else:
            row_idx = idx.expand(rows.shape[0], -1) if idx.shape[0] == 1 else idx.index_select(0, rows)
            elem = flags.gather(1, row_idx)
        elem = elem.reshape(rows.shape[0], *x.shape[1:])
        out.append(torch.where(elem, b.index_select(0, rows), x.index_select(0, rows)))
    return tuple(out)


# --------------------------------------------------------------------------- metrics


# Spread below this many units in the last place (ulps) of the values' magnitude is taken for rounding, not variation.
# Numbers that are equal in exact arithmetic but computed in another order (a sum vectorised differently, a forward
# run in a batch of another size, a mean of equal values) differ by a few ulps of the magnitudes involved, growing
# slowly with the number of terms; 64 ulps is well above that and, relative to the largest value involved, still far
# below any difference a model or an attribution means (1.4e-14 in float64, 7.6e-6 in float32).
_ROUNDING_ULPS = 64


def _nonzero(den: Tensor) -> Tensor:
    """``den`` with its zeros replaced by 1, to divide by where a zero denominator is handled by the caller."""
    return torch.where(den == 0, torch.ones_like(den), den)


def _draw(ctx: _Context, k: int, sample: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """``k`` perturbations ``(k, N, ...)`` of every input, ``sample(x)`` giving one on the CPU."""
    # Drawn one perturbation at a time so the noise does not depend on the chunking.
    draws = [[sample(x).to(x.device) for x in ctx.xs] for _ in range(k)]
    return [torch.stack([d[j] for d in draws]) for j in range(len(ctx.xs))]


def _all_rows(ctx: _Context) -> Tensor:
    return torch.arange(ctx.n, device=ctx.xs[0].device)


def _drops(ctx: _Context, f_x: Tensor, pert: tuple[Tensor, ...], k: int) -> Tensor:
    """``F(x) - F(x~)`` for ``k`` perturbations ``x~`` of every example stacked in ``pert``: shape ``(k, N)``."""
    rows = _tile_rows(ctx, k)
    drop = f_x.unsqueeze(0) - _forward(ctx, pert, rows).view(k, ctx.n)
    # A perturbation that leaves a row exactly as it was (its features already at the baseline) changes nothing: its
    # drop is exactly 0, not the last-bit difference a model may show between batches of different sizes.
    # A NaN output stays NaN.
    same = torch.stack([(p == x.index_select(0, rows)).reshape(rows.shape[0], -1).all(1) for p, x in zip(pert, ctx.xs)])
    same = same.all(0).view(k, ctx.n).to(drop.device) & torch.isfinite(drop)
    return torch.where(same, torch.zeros_like(drop), drop)


def _standardised(values: Tensor, scale: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Rows of ``values`` (N, P) centred and divided by their spread, in float64, and whether each row varies.

    A row varies when its root-mean-square deviation exceeds :data:`_ROUNDING_ULPS` ulps (``eps``) of ``scale``
    (N,), the largest magnitude its values were formed from. Rows that do not vary come back as zeros.
    """
    v = values.to(torch.float64)
    # Shifting by the first value before centring makes a row of equal values centre to exact zeros (their mean,
    # rounded, need not equal them).
    v = v - v[:, :1]
    v = v - v.mean(1, keepdim=True)
    # Divided by the largest deviation first, so that squaring neither overflows nor underflows.
    largest = v.abs().amax(1, keepdim=True)
    v = v / _nonzero(largest)
    rms = v.pow(2).mean(1, keepdim=True).sqrt()
    varies = (rms * largest)[:, 0] > _ROUNDING_ULPS * eps * scale.to(torch.float64)
    return torch.where(varies[:, None], v / _nonzero(rms), torch.zeros_like(v)), varies


@_metric(higher_is_better=False)
def completeness_error(ctx: _Context, attributions):
    r"""Violation of the completeness axiom.

    .. math:: \mathrm{CE}(x) = \Big|\sum_i \phi_i(x) - \big(F(x) - F(x')\big)\Big|

    Integrated Gradients satisfies completeness exactly in the limit of exact
    integration (Sundararajan et al., 2017), so the score measures the
    integration error of an IG attribution.  ``F`` is the raw target output
    (no softmax), the function IG explains.

    The score is defined for every input: all-zero attributions score
    ``|F(x) - F(x')|``, an input equal to its baseline ``|sum_i phi_i|`` (0 for
    zero attributions); one feature and one example need nothing special.

    Parameters
    ----------
    model : callable
        ``model(*inputs, *additional)`` returning ``(N, C)`` or ``(N,)`` outputs.
    inputs : Tensor or tuple of Tensor
        Inputs ``x`` (or a whole batch with ``forward_arg_extractor``).
    attributions : Tensor or tuple of Tensor
        Attributions ``phi`` for the attributed inputs (extra trailing
        dimensions are summed).
    targets : LongTensor of shape (N,), optional
        Class index per example; ``None`` for scalar outputs.
    baselines : None, number, Tensor or tuple, optional
        The reference ``x'`` (default zeros).
    seed, batch_size, explainer, forward_arg_extractor, additional_forward_arg_extractor
        See the module documentation; ``seed`` and ``explainer`` are unused.

    Returns
    -------
    Tensor of shape (N,)
        Absolute completeness error; lower is better.

    References
    ----------
    Sundararajan, Taly and Yan (2017). "Axiomatic Attribution for Deep Networks." ICML.
    """
    attrs = _attributions(ctx, attributions, "reducible")
    base = _baselines(ctx)
    rows = _all_rows(ctx)
    f_x = _forward(ctx, ctx.xs, rows)
    f_base = _forward(ctx, tuple(b.contiguous() for b in base), rows)
    total = sum(a.reshape(ctx.n, -1).sum(1) for a in attrs)
    return (total.to(f_x.dtype) - (f_x - f_base)).abs()


@_metric(higher_is_better=False)
def infidelity(
    ctx: _Context, attributions, *, noise_std=0.1, n_perturbations=20, normalize=False, multiply_by_inputs=True
):
    r"""Infidelity of an explanation under Gaussian perturbations (Yeh et al., 2019).

    .. math::
        \mathrm{INFD}(\phi, F, x) = \mathbb{E}_{I}\Big[\big(I^\top \phi(x) - (F(x) - F(x - I))\big)^2\Big]

    estimated by Monte Carlo over ``n_perturbations`` draws of ``I``.

    With ``multiply_by_inputs=True`` (attributions that include the factor
    ``x - x'``, as Integrated Gradients does) the perturbation is drawn in the
    coordinates of that factor: ``eps ~ N(0, noise_std^2)`` elementwise, the
    perturbed input is ``x - eps * (x - x')`` and the explanation term is
    ``eps^T phi``.  For a linear model, exact IG then has infidelity 0.  With
    ``multiply_by_inputs=False`` (gradient-like attributions) ``I = eps``
    directly, as in the paper.

    With ``normalize=True`` the attribution is first rescaled by the scalar
    ``beta`` minimising the estimate, in closed form
    ``beta = E[(I^T phi) * dF] / E[(I^T phi)^2]`` per example (``beta = 0`` when
    ``I^T phi`` vanishes), so only the shape of the attribution is scored.

    Degenerate cases have the values of the formula, all finite: for an input
    equal to its baseline with ``multiply_by_inputs=True`` every perturbation
    is zero, ``F`` does not change (the drop is taken as exactly 0) and the
    score is ``E[(eps^T phi)^2]``, which is 0 for zero attributions; all-zero
    attributions score ``E[dF^2]``, with ``normalize=True`` too (``beta = 0``).

    Parameters
    ----------
    model, inputs, attributions, targets
        See the module documentation; attributions must match the input shapes.
    noise_std : float, default 0.1
        Standard deviation ``sigma`` of the Gaussian perturbation (> 0).
    n_perturbations : int, default 20
        Monte Carlo sample count (>= 1).
    normalize : bool, default False
        Rescale the attribution by the optimal ``beta`` before scoring.
    multiply_by_inputs : bool, default True
        Scale the perturbation by ``x - x'`` (see above).
    baselines : None, number, Tensor or tuple, optional
        ``x'`` used by ``multiply_by_inputs=True`` (default zeros).
    seed, batch_size, forward_arg_extractor, additional_forward_arg_extractor
        See the module documentation.
    explainer
        Unused.

    Returns
    -------
    Tensor of shape (N,)
        Estimated infidelity; lower is better.

    References
    ----------
    Yeh, Hsieh, Suggala, Inouye and Ravikumar (2019). "On the (In)fidelity and
    Sensitivity of Explanations." NeurIPS.
    """
    name = ctx.metric
    noise_std = _checked(name, check_positive, "noise_std", noise_std)
    n_perturbations = _checked(name, check_positive_int, "n_perturbations", n_perturbations, allow_none=False)
    normalize = _checked(name, check_bool, "normalize", normalize)
    multiply_by_inputs = _checked(name, check_bool, "multiply_by_inputs", multiply_by_inputs)
    attrs = _attributions(ctx, attributions, "equal")
    _require_float_inputs(ctx, "adds Gaussian noise to the inputs")
    dot, diff = _infidelity_terms(ctx, attrs, noise_std, n_perturbations, multiply_by_inputs)
    if normalize:
        dot = _best_multiple(dot, diff)
    return ((dot - diff) ** 2).mean(1)


def _infidelity_terms(
    ctx: _Context, attrs: tuple[Tensor, ...], noise_std: float, n_perturbations: int, multiply_by_inputs: bool
) -> tuple[Tensor, Tensor]:
    """``(I^T phi, F(x) - F(x - I))`` for every example and perturbation, each ``(N, P)``."""
    scale = tuple(x - b for x, b in zip(ctx.xs, _baselines(ctx))) if multiply_by_inputs else (None,) * len(ctx.xs)
    gen = ctx.generator()
    f_x = _forward(ctx, ctx.xs, _all_rows(ctx))
    dots, diffs = [], []
    for start, stop in _chunk_sizes(ctx, n_perturbations):
        k = stop - start
        eps = _draw(ctx, k, lambda x: torch.randn(x.shape, generator=gen, dtype=x.dtype) * noise_std)
        pert = []
        dot = 0.0
        for e, x, s, a in zip(eps, ctx.xs, scale, attrs):
            step = e if s is None else e * s
            pert.append((x.unsqueeze(0) - step).reshape(k * ctx.n, *x.shape[1:]))
            dot = dot + (e * a.unsqueeze(0)).reshape(k, ctx.n, -1).sum(-1)
        dots.append(dot)
        diffs.append(_drops(ctx, f_x, tuple(pert), k))
    return torch.cat(dots).T.to(f_x.dtype), torch.cat(diffs).T


def _best_multiple(dot: Tensor, diff: Tensor) -> Tensor:
    """``beta * dot`` with the least-squares ``beta = sum(dot diff) / sum(dot^2)`` of each row; 0 where dot is 0."""
    # Formed on dot / max|dot|, so that neither the products nor the squares overflow or underflow.
    largest = dot.abs().amax(1, keepdim=True)
    unit = dot / _nonzero(largest)
    beta = (unit * diff).sum(1, keepdim=True) / _nonzero(unit.pow(2).sum(1, keepdim=True))
    return unit * beta


def _norm(values: Tensor, norm: str) -> Tensor:
    if norm == "l2":
        return values.pow(2).sum(-1).sqrt()
    if norm == "l1":
        return values.abs().sum(-1)
    return values.abs().amax(-1)


def _rebuild_batch(ctx: _Context, new_xs: tuple[Tensor, ...], rows: Tensor) -> Any:
    """The explainer's input for perturbed rows: the batch with attributed tensors replaced."""
    if not ctx.extracted:
        return new_xs if ctx.was_tuple else new_xs[0]

    found = [False] * len(ctx.xs)

    def replace(item: Any) -> Any:
        for k, x in enumerate(ctx.xs):
            if item is x:
                found[k] = True
                return new_xs[k]
        if isinstance(item, Tensor) and item.dim() > 0 and item.shape[0] == ctx.n:
            return item.index_select(0, rows.to(item.device))
        return item

    raw = ctx.raw
    if isinstance(raw, Tensor):
        batch: Any = replace(raw)
    elif isinstance(raw, Mapping):
        batch = {key: replace(v) for key, v in raw.items()}
    elif isinstance(raw, list):
        batch = [replace(v) for v in raw]
    elif isinstance(raw, tuple):
        items = [replace(v) for v in raw]
        # Named tuples are rebuilt field by field; plain tuples directly.
        batch = type(raw)(*items) if hasattr(raw, "_fields") else tuple(items)
    else:
        batch = None
    if batch is None or not all(found):
        raise ValueError(
            "sensitivity_max: to perturb a batch, the tensors returned by forward_arg_extractor must be elements "
            "of the batch (a tuple, list or dict), e.g. forward_arg_extractor=lambda batch: batch[0]"
        )
    return batch


@_metric(higher_is_better=False, evaluates="explainer")
def sensitivity_max(ctx: _Context, attributions, *, radius=0.02, n_perturbations=10, norm="l2"):
    r"""Maximum relative change of the explanation under small input perturbations (Yeh et al., 2019).

    .. math::
        \mathrm{SENS}_{\max}(\phi, x) = \max_{\|\delta\|_\infty \le r}
            \frac{\|\phi(x + \delta) - \phi(x)\|}{\|\phi(x)\|}

    The maximum is estimated over ``n_perturbations`` draws ``delta ~ U[-r, r]``
    (elementwise).  ``phi(x)`` is ``attributions``; ``phi(x + delta)`` is
    computed by ``explainer.attribute`` on batches of perturbed copies of all
    examples at once.  Norms are taken over all attribution elements of an
    example (all tensors of a tuple together).

    When ``phi(x) = 0`` the ratio is undefined; the denominator is then taken
    as 1, as Captum's ``sensitivity_max`` does, so the score is the absolute
    change ``max ||phi(x + delta)||``: 0 when the explanation stays zero, and
    finite otherwise, so that an all-zero explanation is neither rewarded nor
    scored infinite.  One feature or one example needs nothing special.  A
    NaN or infinite attribution (from the explainer or in ``attributions``)
    gives a NaN or infinite score.

    Parameters
    ----------
    model
        Unused (the explainer carries its model); kept for the common signature.
    inputs, targets
        See the module documentation.  With ``forward_arg_extractor``, the
        perturbed batch handed to the explainer is ``inputs`` with the extracted
        tensors replaced by their perturbed copies (they must be elements of the
        batch) and every other per-example tensor repeated alongside.
    attributions : Tensor or tuple of Tensor
        ``explainer.attribute(inputs, targets)``.
    explainer : object with ``.attribute(inputs, targets)``
        Required, e.g. :class:`integrad.explainers.IntegratedGradients`.
    radius : float, default 0.02
        ``r``, the L-infinity radius of the perturbation (> 0).
    n_perturbations : int, default 10
        Number of perturbations (>= 1).
    norm : {"l2", "l1", "linf"}, default "l2"
        The norm ``||.||``.
    seed, batch_size
        See the module documentation (``batch_size`` bounds the rows per
        explainer call).
    baselines, forward_arg_extractor, additional_forward_arg_extractor
        ``baselines`` is unused (the explainer applies its own).

    Returns
    -------
    Tensor of shape (N,)
        Estimated max-sensitivity; lower is better.

    References
    ----------
    Yeh, Hsieh, Suggala, Inouye and Ravikumar (2019). "On the (In)fidelity and
    Sensitivity of Explanations." NeurIPS.
    """
    name = ctx.metric
    radius = _checked(name, check_positive, "radius", radius)
    n_perturbations = _checked(name, check_positive_int, "n_perturbations", n_perturbations, allow_none=False)
    norm = _checked(name, check_choice, "norm", norm, ("l2", "l1", "linf"))
    attrs = _attributions(ctx, attributions, "leading")
    _require_float_inputs(ctx, "adds uniform noise to the inputs")
    gen = ctx.generator()
    ref = torch.cat([a.reshape(ctx.n, -1) for a in attrs], dim=1)  # (N, D)
    # Where phi(x) = 0 the relative change is undefined: dividing by 1 there scores the absolute change (Captum's
    # convention), finite and 0 only for an explanation that stays zero.
    ref_norm = _nonzero(_norm(ref, norm))
    ratios = []
    for start, stop in _chunk_sizes(ctx, n_perturbations):
        k = stop - start
        delta = _draw(ctx, k, lambda x: (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * radius)
        pert = tuple((x.unsqueeze(0) + d).reshape(k * ctx.n, *x.shape[1:]) for x, d in zip(ctx.xs, delta))
        new_attrs = _explain_perturbed(ctx, pert, _tile_rows(ctx, k), attrs)
        flat = torch.cat([a.reshape(k, ctx.n, -1).to(ref.dtype) for a in new_attrs], dim=2)
        ratios.append(_norm(flat - ref.unsqueeze(0), norm) / ref_norm)  # (k, N)
    return torch.cat(ratios).amax(0)


def _explain_perturbed(
    ctx: _Context, pert: tuple[Tensor, ...], rows: Tensor, attrs: tuple[Tensor, ...]
) -> tuple[Tensor, ...]:
    """``explainer.attribute`` of the perturbed rows (``rows[r]`` the example of row r), detached."""
    # At most batch_size rows per explainer call: a perturbation of a batch larger than that is split too.
    total = rows.shape[0]
    step = total if ctx.batch_size is None else min(total, ctx.batch_size)
    parts = []
    for lo in range(0, total, step):
        sub_rows = rows[lo : lo + step]
        batch = _rebuild_batch(ctx, tuple(p[lo : lo + step] for p in pert), sub_rows)
        tgt = None if ctx.targets is None else ctx.targets[sub_rows]
        with torch.enable_grad():
            new = ctx.explainer.attribute(batch, tgt)
        new_attrs = (new,) if isinstance(new, Tensor) else tuple(new) if isinstance(new, (tuple, list)) else None
        expected = [(len(sub_rows), *a.shape[1:]) for a in attrs]
        if new_attrs is None or [tuple(a.shape) for a in new_attrs] != expected:
            got = type(new).__name__ if new_attrs is None else [tuple(a.shape) for a in new_attrs]
            raise ValueError(
                f"sensitivity_max: explainer.attribute on {len(sub_rows)} perturbed rows must return attributions "
                f"shaped like attributions with batch size {len(sub_rows)}, {expected}; got {got}"
            )
        parts.append(new_attrs)
    return tuple(torch.cat([p[i].detach() for p in parts]) for i in range(len(attrs)))


def _subset_count(name: str, subset_size: Any, total: int) -> int:
    accepted = f"a fraction in (0, 1) or an integer count in [1, {total}] (the number of features)"
    if not is_real(subset_size):
        raise TypeError(f"{name}: subset_size must be {accepted}; got {subset_size!r}")
    if is_int(subset_size):
        if not 1 <= subset_size <= total:
            raise ValueError(f"{name}: subset_size must be {accepted}; got {subset_size!r}")
        return int(subset_size)
    if not 0 < subset_size < 1:
        raise ValueError(f"{name}: subset_size must be {accepted}; got {subset_size!r}")
    return max(1, min(total, round(float(subset_size) * total)))


@_metric(higher_is_better=True)
def mu_fidelity(ctx: _Context, attributions, *, subset_size=0.2, n_subsets=50, feature_mask=None, reduce_channels=True):
    r"""Faithfulness correlation :math:`\mu_F` (Bhatt et al., 2020).

    .. math::
        \mu_F(\phi, F, x) = \operatorname{corr}_{S \in \binom{[d]}{|S|}}
            \Big(\sum_{i \in S} \phi_i(x),\; F(x) - F(x_{[x_S = x'_S]})\Big)

    the Pearson correlation, over ``n_subsets`` random feature subsets ``S`` of
    fixed size, between the attribution mass of ``S`` and the output drop when
    the features in ``S`` are set to the baseline.  ``F`` is the raw target
    output.

    If either side does not vary over the subsets the correlation is
    undefined, and the score is 0: no evidence for or against the
    attribution.  That is the case when every subset is the same set
    (``subset_size`` equal to the number of features ``d``, or ``d = 1``), for
    all-zero or uniform attributions (every subset holds the same mass), and
    when the output does not respond: a constant model, or an input equal to
    its baseline (a perturbation that changes no value is taken to change the
    output by exactly 0).  A spread within rounding, 64 units in the last place
    of the largest magnitude involved (``sum_i |phi_i|`` for the masses,
    ``|F(x)|`` plus the largest drop for the drops), counts as none.  A NaN or
    infinite attribution or output gives NaN.

    Parameters
    ----------
    model, inputs, attributions, targets
        See the module documentation.
    subset_size : float or int, default 0.2
        ``|S|``: a fraction of the features in (0, 1) or a count in [1, d].
    n_subsets : int, default 50
        Number of random subsets (>= 2).
    feature_mask : integer Tensor or tuple, optional
        Group ids (broadcastable to each input) defining the features; a
        feature is removed and attributed as a whole.
    reduce_channels : bool, default True
        Without ``feature_mask``, treat each pixel of an ``(N, C, H, W)`` input
        as one feature across channels.
    baselines : None, number, Tensor or tuple, optional
        Values that removed features take (default zeros).
    seed, batch_size, explainer, forward_arg_extractor, additional_forward_arg_extractor
        See the module documentation; ``explainer`` is unused.

    Returns
    -------
    Tensor of shape (N,)
        Correlation in [-1, 1]; higher is better.

    References
    ----------
    Bhatt, Weller and Moura (2020). "Evaluating and Aggregating Feature-based
    Model Explanations." IJCAI.
    """
    n_subsets = _check_n_subsets(ctx.metric, n_subsets)
    attrs = _attributions(ctx, attributions, "reducible")
    groups = _groups(ctx, feature_mask, reduce_channels)
    count = _subset_count(ctx.metric, subset_size, groups.total)
    group_attr = _group_attributions(attrs, groups)  # (N, G)
    masses, drops, f_x = _subset_masses_and_drops(ctx, group_attr, groups, count, n_subsets)
    a, a_varies = _standardised(masses, group_attr.abs().sum(1), torch.finfo(masses.dtype).eps)
    d, d_varies = _standardised(drops, f_x.abs() + drops.abs().amax(1), torch.finfo(drops.dtype).eps)
    # Rows that do not vary come back as zeros, so their correlation is 0; the clamp only removes rounding.
    corr = (a * d).mean(1).clamp(-1.0, 1.0)
    finite = torch.isfinite(masses).all(1) & torch.isfinite(drops).all(1)
    return torch.where(finite, corr, torch.full_like(corr, math.nan)).to(f_x.dtype)


def _check_n_subsets(metric: str, n_subsets: Any) -> int:
    # No check of arguments.py takes a lower bound above 1.
    if not is_int(n_subsets) or n_subsets < 2:
        raise ValueError(f"{metric}: n_subsets must be an int >= 2 (a correlation needs two values); got {n_subsets!r}")
    return int(n_subsets)


def _subset_masses_and_drops(
    ctx: _Context, group_attr: Tensor, groups: _Groups, count: int, n_subsets: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For ``n_subsets`` random subsets of ``count`` features: each one's attribution mass and the output drop when
    it is removed, both ``(N, P)``, and the outputs ``F(x)``."""
    base = _baselines(ctx)
    gen = ctx.generator()
    device = group_attr.device
    f_x = _forward(ctx, ctx.xs, _all_rows(ctx))
    masses, drops = [], []
    for start, stop in _chunk_sizes(ctx, n_subsets):
        k = stop - start
        keys = torch.stack([torch.rand(ctx.n, groups.total, generator=gen) for _ in range(k)]).to(device)
        chosen = keys.topk(count, dim=-1).indices
        removed = torch.zeros(k, ctx.n, groups.total, dtype=torch.bool, device=device).scatter(-1, chosen, True)
        masses.append((group_attr.unsqueeze(0) * removed).sum(-1))
        pert = _remove(ctx, base, groups, removed.reshape(k * ctx.n, -1), _tile_rows(ctx, k))
        drops.append(_drops(ctx, f_x, pert, k))
    return torch.cat(masses).T, torch.cat(drops).T, f_x


def _flip_area(
    ctx: _Context, group_attr: Tensor, groups: _Groups, base, n_steps: int, apply_softmax, descending: bool
) -> Tensor:
    """Normalised area under the feature-flipping curve (``descending``: most relevant first)."""
    device = group_attr.device
    total = groups.total
    # Feature count removed after step k of n: round(k * G / n), from 0 (intact) to G (all baseline).
    counts = torch.round(torch.arange(n_steps + 1, dtype=torch.float64) * total / n_steps).to(torch.long).to(device)
    order = torch.sort(group_attr, dim=1, descending=descending, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(total, device=device).expand(ctx.n, total))
    curve = []
    for start, stop in _chunk_sizes(ctx, n_steps + 1):
        k = stop - start
        removed = rank.unsqueeze(0) < counts[start:stop].view(k, 1, 1)
        rows = _tile_rows(ctx, k)
        pert = _remove(ctx, base, groups, removed.reshape(k * ctx.n, total), rows)
        curve.append(_forward(ctx, pert, rows, apply_softmax).view(k, ctx.n))
    y = torch.cat(curve)  # (n_steps + 1, N)
    return ((y[:-1] + y[1:]) / 2).sum(0) / n_steps


_FLIP_DOC = r"""

    Features are sorted by attribution ({order}) and replaced cumulatively by
    the baseline in ``n_steps`` equal fractions ``k / n_steps`` of the
    features (``round(k d / n_steps)`` features after step ``k``).  With
    ``y_k`` the target output after step ``k`` (``y_0 = F(x)``, ``y_n = F(x')``)
    the score is the trapezoid area under the curve over fractions in [0, 1]:

    .. math:: \mathrm{AUC} = \frac{1}{n}\sum_{k=0}^{n-1} \frac{y_k + y_{k+1}}{2}

    Ties in the attribution are broken by feature position, the same way in
    both orders, so that tied features leave in one order for ``morf`` and
    ``lerf`` alike: with all attributions tied (all zero, for one) or a single
    feature the two curves coincide and ``abpc`` is exactly 0.  An input
    equal to its baseline, or a constant model, gives a flat curve: ``morf``
    and ``lerf`` equal ``F(x)`` and ``abpc`` is 0.  Every value is finite for
    a finite model output; a NaN output gives NaN.

    Parameters
    ----------
    model, inputs, attributions, targets
        See the module documentation.
    n_steps : int, default 20
        Number of equal removal fractions (>= 1).
    apply_softmax : bool or None, default None
        Score the target's softmax probability instead of its logit.  ``None``
        means True for ``(N, C)`` outputs with ``C > 1`` and False for scalar
        outputs.
    feature_mask : integer Tensor or tuple, optional
        Group ids (broadcastable to each input) defining the features; a group
        is ranked by its summed attribution and removed as a whole.
    reduce_channels : bool, default True
        Without ``feature_mask``, rank each pixel of an ``(N, C, H, W)`` input by
        its attribution summed over channels and flip all its channels together.
    baselines : None, number, Tensor or tuple, optional
        Values that removed features take (default zeros).
    batch_size, forward_arg_extractor, additional_forward_arg_extractor
        See the module documentation.
    seed, explainer
        Unused (ties are broken by feature position).

    Returns
    -------
    Tensor of shape (N,)
        {returns}

    References
    ----------
    Bach, Binder, Montavon, Klauschen, Mueller and Samek (2015). "On Pixel-Wise
    Explanations for Non-Linear Classifier Decisions by Layer-Wise Relevance
    Propagation." PLoS ONE.
    Samek, Binder, Montavon, Lapuschkin and Mueller (2017). "Evaluating the
    Visualization of What a Deep Neural Network Has Learned." IEEE TNNLS.
    """


def _flip_metric(name: str, higher_is_better: bool, orders: tuple[bool, ...], summary: str, order: str, returns: str):
    """Define a feature-flipping metric: the first order's area minus the second's, if any."""

    def core(ctx: _Context, attributions, *, n_steps=20, apply_softmax=None, feature_mask=None, reduce_channels=True):
        n_steps = _checked(ctx.metric, check_n_steps, n_steps)
        apply_softmax = _check_optional_bool(
            ctx.metric, "apply_softmax", apply_softmax, "scores the softmax for (N, C) outputs with C > 1"
        )
        attrs = _attributions(ctx, attributions, "reducible")
        groups = _groups(ctx, feature_mask, reduce_channels)
        base = _baselines(ctx)
        group_attr = _group_attributions(attrs, groups)
        areas = [_flip_area(ctx, group_attr, groups, base, n_steps, apply_softmax, d) for d in orders]
        return areas[0] if len(areas) == 1 else areas[0] - areas[1]

    core.__name__ = core.__qualname__ = name
    core.__doc__ = summary + _FLIP_DOC.replace("{order}", order).replace("{returns}", returns)
    return _metric(higher_is_better)(core)


morf = _flip_metric(
    "morf",
    False,
    (True,),
    "Area under the Most-Relevant-First feature-flipping curve (pixel flipping).",
    "most relevant first",
    "MoRF area; lower is better (the output should collapse when the most relevant features go).",
)
lerf = _flip_metric(
    "lerf",
    True,
    (False,),
    "Area under the Least-Relevant-First feature-flipping curve.",
    "least relevant first",
    "LeRF area; higher is better (the output should persist while irrelevant features go).",
)
abpc = _flip_metric(
    "abpc",
    True,
    (False, True),
    "Area Between the Perturbation Curves, ``lerf - morf``.",
    "once least and once most relevant first",
    "LeRF area minus MoRF area; higher is better.",
)


@_metric(higher_is_better=False, evaluates=None)
def complexity(ctx: _Context, attributions, *, feature_mask=None):
    r"""Complexity: entropy of the fractional contribution distribution (Bhatt et al., 2020).

    .. math::
        \mathrm{C}(\phi, x) = -\sum_{i=1}^{d} p_i \log p_i, \qquad
        p_i = \frac{|\phi_i(x)|}{\sum_j |\phi_j(x)|}

    with ``0 log 0 = 0``.  A one-hot attribution scores 0, a uniform one
    ``log d``.  An all-zero attribution ranks nothing: ``p`` is undefined, and
    it is scored as uniform, ``log d``, the worst value, so that an empty
    explanation never passes for a concise one.  A single feature scores 0
    (``log 1``), all-zero or not.  The scale of the attributions does not
    matter, however small or large.  A NaN or infinite attribution gives NaN.
    The model is not evaluated.

    Parameters
    ----------
    model
        Unused; kept for the common signature.
    inputs, attributions, targets
        See the module documentation; ``targets`` is validated but unused.
    feature_mask : integer Tensor or tuple, optional
        Group ids (broadcastable to each input): ``|phi|`` is summed within each
        group and ``d`` is the number of groups.  Without it every attribution
        element is a feature.
    baselines, seed, batch_size, explainer, forward_arg_extractor, additional_forward_arg_extractor
        See the module documentation; only the extractors are used.

    Returns
    -------
    Tensor of shape (N,)
        Entropy in nats, in [0, log d]; lower is better (more concise).

    References
    ----------
    Bhatt, Weller and Moura (2020). "Evaluating and Aggregating Feature-based
    Model Explanations." IJCAI.
    """
    if feature_mask is None:
        attrs = _attributions(ctx, attributions, "leading")
        mass = torch.cat([a.detach().abs().reshape(ctx.n, -1) for a in attrs], dim=1)
    else:
        attrs = _attributions(ctx, attributions, "reducible")
        mass = _group_attributions(tuple(a.abs() for a in attrs), _groups(ctx, feature_mask, False))
    if mass.shape[1] == 0:
        return mass.sum(1)  # no features: an empty sum
    # Divided by the largest mass first, so that the total neither overflows nor underflows.
    share = mass / _nonzero(mass.amax(1, keepdim=True))
    total = share.sum(1, keepdim=True)
    p = torch.where(total > 0, share / _nonzero(total), torch.full_like(share, 1.0 / mass.shape[1]))
    plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
    entropy = -plogp.sum(1)
    return torch.where(torch.isfinite(mass).all(1), entropy, torch.full_like(entropy, math.nan))
