"""Guided Integrated Gradients (Kapishnikov et al. 2021): a path that moves the features of small gradient first."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import Tensor

from .. import arguments
from ..engine import Chunking, IntegrationReport, PathIntegral, Probe, Reduction, gradients_at, probe_values
from ..paths import StraightLine
from .base import PathAttribution, convergence_delta, keeps_model_state, output_probe, restore_structure

TensorOrTuple = Tensor | tuple[Tensor, ...]

#: How close the L1 distance to the input must come to a step's target (relative and absolute) to end the step.
CLOSE = 1e-9


class GuidedIntegratedGradients(PathAttribution):
    r"""Guided Integrated Gradients: a path from the baseline to the input chosen, step by step, by the gradient.

    Each of ``n`` steps starts with the gradient ``g`` at the current point ``x`` and moves ``x`` until its L1
    distance to the input is ``(1 − (s + 1)/n)`` of the baseline's: first every feature that lags behind
    ``α_min = α − max_dist`` (``α = (s + 1)/n``, measured along its own baseline-to-input segment) is snapped forward
    to ``α_min``; then, repeatedly, the ``fraction`` of features with the smallest ``|g|`` (the lower quantile) is
    moved toward ``α_max = α + max_dist``, as far as the step's target needs, features already at ``α_max`` being
    left out. The attribution is ``Σ_s g_s ⊙ (x_{s+1} − x_s)``: a left Riemann sum along the path, whose
    attributions add up to ``F(x) − F(x′)`` as the steps shrink. Features where the input equals the baseline stay
    put and get 0; an example whose input is its baseline gets 0 everywhere. With ``max_dist = 0`` the path is the
    straight line, and the sum is integrated gradients' left Riemann sum.

    All examples advance together, one gradient evaluation of the batch per step (chunked under the memory budget);
    the path of each depends only on its own gradients. For tuple inputs the features of all tensors of an example
    form one vector (one quantile, one L1 distance). The path is tracked in float64 whatever the inputs' dtype.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs; called as ``forward_func(*inputs, *additional_forward_args)``.

    References
    ----------
    Kapishnikov, Venugopalan, Avci, Wedin, Terry, Bolukbasi. Guided Integrated Gradients: an Adaptive Path Method
    for Removing Noise. CVPR 2021. https://arxiv.org/abs/2106.09788
    """

    def __init__(self, forward_func: Callable):
        super().__init__(forward_func, multiply_by_inputs=True)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        *,
        memory_budget: int | str | None = None,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        memory_budget: int | str | None = None,
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @keeps_model_state
    def attribute(
        self,
        inputs,
        baselines=None,
        target=None,
        additional_forward_args=None,
        n_steps=200,
        fraction=0.25,
        max_dist=0.02,
        internal_batch_size=None,
        return_convergence_delta=False,
        *,
        memory_budget=None,
    ):
        """Attribute ``forward_func``'s output at ``target`` to each input feature along the guided path.

        Parameters
        ----------
        inputs, baselines, target, additional_forward_args
            As for :meth:`IntegratedGradients.attribute`.
        n_steps : int, default 200
            Steps of the path, one gradient evaluation of the batch each.
        fraction : float, default 0.25
            Share of the features, in (0, 1], moved in each round of a step: those of smallest ``|g|``.
        max_dist : float, default 0.02
            How far, in [0, 1], a feature's own position along its segment may be from the step's ``α``: 0 keeps the
            straight line, 1 lets the path go anywhere in the box between baseline and input.
        internal_batch_size, memory_budget
            Examples per forward pass, or the bytes one may take (as for :meth:`IntegratedGradients.attribute`).
        return_convergence_delta : bool, default False
            Also return ``Σ attributions − (F(x) − F(x′))`` per example.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        walk, was_tuple = self._prepare(
            inputs,
            baselines,
            target,
            additional_forward_args,
            n_steps,
            fraction,
            max_dist,
            internal_batch_size,
            memory_budget,
        )
        total = DisplacementSum(walk.line)
        walk.run(total, with_displacement=True, through_end=False)
        attributions = tuple(a.to(dt) for a, dt in zip(total.attributions(), walk.line.dtypes))
        report = IntegrationReport.of(walk.chunking, torch.full((walk.batch,), walk.n_steps, dtype=torch.long))
        self.last_report = report
        if return_convergence_delta:
            f_end = probe_values(walk.probe, walk.line.end, torch.arange(walk.batch), walk.chunking)
            report.delta = convergence_delta(attributions, total.first_values.cpu(), f_end)
            return restore_structure(attributions, was_tuple), report.delta
        return restore_structure(attributions, was_tuple)

    def _prepare(
        self,
        inputs: Any,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        n_steps: Any,
        fraction: Any,
        max_dist: Any,
        internal_batch_size: Any,
        memory_budget: Any,
    ) -> tuple[GuidedWalk, bool]:
        """Validated arguments, as the walk along the guided path that they describe."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "Guided IG needs gradients, which torch.inference_mode() forbids; call attribute outside inference "
                "mode (torch.no_grad() is fine)"
            )
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        n_steps = arguments.check_positive_int("n_steps", n_steps, allow_none=False)
        fraction, max_dist = arguments.check_fraction(fraction), arguments.check_max_dist(max_dist)
        device = inputs_t[0].device
        rows_per_pass = arguments.check_positive_int("internal_batch_size", internal_batch_size)
        chunking = Chunking.make(rows_per_pass, memory_budget, device)
        start = arguments.normalize_baselines(baselines, inputs_t, was_tuple)
        batch = inputs_t[0].shape[0]
        target_t = arguments.normalize_target(target, batch, device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
        probe = output_probe(self.forward_func, lambda points, examples: points, target_t, args, per_example)
        line = StraightLine(start, tuple(x.detach() for x in inputs_t))
        return GuidedWalk(probe, line, chunking, n_steps, float(fraction), float(max_dist)), was_tuple

    def _reduce_points(
        self,
        reduction: Callable[..., Reduction],
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
    ) -> tuple[PathIntegral, bool]:
        """Hand the gradient and output at every point ``x_0 … x_n`` of the guided path (step-major, ``n_steps + 1``
        points per example) to ``reduction(None, path)``; the integral and whether ``inputs`` was a tuple come
        back."""
        walk, was_tuple = self._prepare(
            inputs,
            baselines,
            target,
            additional_forward_args,
            n_steps,
            fraction,
            max_dist,
            internal_batch_size,
            memory_budget,
        )
        reducer = reduction(None, walk.line)
        walk.run(reducer, with_displacement=False, through_end=True)
        report = IntegrationReport.of(walk.chunking, torch.full((walk.batch,), walk.n_steps + 1, dtype=torch.long))
        self.last_report = report
        return PathIntegral([], None, None, report, walk.line, reducer), was_tuple


@dataclass
class GuidedWalk:
    """The guided path of a batch, walked step by step: ``run`` hands each step's gradients to a reduction."""

    probe: Probe
    line: StraightLine
    chunking: Chunking
    n_steps: int
    fraction: float
    max_dist: float

    @property
    def batch(self) -> int:
        return self.line.batch

    def run(self, reduction: Reduction, with_displacement: bool, through_end: bool) -> None:
        """Walk the path. Step ``s`` hands ``reduction`` rows ``s·B … s·B + B − 1``: each example's gradient at
        ``x_s`` (times ``x_{s+1} − x_s`` with ``with_displacement``) and output there. ``through_end`` hands the end
        point ``x_n`` on as step ``n``."""
        box = Box.between(self.line)
        examples = torch.arange(self.batch)
        x = box.start.clone()
        for step in range(self.n_steps + through_end):
            grads, values = gradients_at(self.probe, self._points(x), examples, self.chunking)
            if step == self.n_steps:
                reduction.add(grads, values, step * self.batch, self.batch, True)
                break
            gradient = torch.cat([g.reshape(self.batch, -1) for g in grads], 1).to(torch.float64)
            after = guided_step(x, gradient, step, self, box)
            if with_displacement:
                grads = _unflat(gradient * (after - x), self.line.like)
            reduction.add(grads, values, step * self.batch, self.batch, True)
            x = after

    def _points(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(p.to(like.dtype) for p, like in zip(_unflat(x, self.line.like), self.line.like))


@dataclass
class Box:
    """Every example's features flattened to ``(B, D)`` float64: baseline ``start``, input ``end``, ``span = end −
    start`` (``safe_span`` has 1 where it is 0), whether a feature moves at all (``nonzero``), the L1 length of the
    span, and whether the example moves at all (an input equal to its baseline gets no path, and attributions of
    0)."""

    start: Tensor
    end: Tensor
    span: Tensor
    safe_span: Tensor
    nonzero: Tensor
    l1_total: Tensor
    moving: Tensor

    @classmethod
    def between(cls, line: StraightLine) -> Box:
        start, end = _flat(line.start), _flat(line.end)
        span = end - start
        nonzero = span != 0
        l1_total = span.abs().sum(1)
        return cls(start, end, span, torch.where(nonzero, span, 1.0), nonzero, l1_total, l1_total > 0)

    def behind(self, x: Tensor, alpha: float) -> Tensor:
        """Which features lie behind ``alpha`` along their own segment, at ``(x − start) / span < alpha`` (never
        one that does not move)."""
        return (x - self.start).div_(self.safe_span).lt(alpha).logical_and_(self.nonzero)


def guided_step(x: Tensor, gradient: Tensor, step: int, walk: GuidedWalk, box: Box) -> Tensor:
    """The guided path's next point from ``x`` (``(B, D)`` float64), given the gradient there.

    Rounds go on while an example has not reached its target: snap the features behind ``α_min``, stop when the L1
    distance to the input is close to the target, else move the lower ``fraction`` of ``|g|`` (features at ``α_max``
    excluded) toward ``α_max``, by the share ``γ`` of the way that closes the gap, or all the way when ``γ > 1``.
    Each round that does not finish an example pins at least one more of its features at ``α_max``, so at most
    ``D + 1`` rounds run.
    """
    n = walk.n_steps
    alpha = (step + 1.0) / n
    alpha_min, alpha_max = max(alpha - walk.max_dist, 0.0), min(alpha + walk.max_dist, 1.0)
    x_min, x_max = box.start + box.span * alpha_min, box.start + box.span * alpha_max
    l1_target = box.l1_total * (1 - (step + 1) / n)
    # |g|, set to inf where a feature sits at α_max (a feature whose input equals its baseline always does).
    magnitude = gradient.abs()
    active = box.moving.clone()
    for _ in range(x.shape[1] + 1):
        if not bool(active.any()):
            break
        live = active.unsqueeze(1)
        x = torch.where(box.behind(x, alpha_min).logical_and_(live), x_min, x)
        l1_current = (x - box.end).abs_().sum(1)
        gap = l1_current - l1_target
        # math.isclose(l1_target, l1_current) with relative and absolute tolerances CLOSE (both are >= 0).
        close = gap.abs() <= torch.maximum(l1_target, l1_current).mul_(CLOSE).clamp_(min=CLOSE)
        active = active.logical_and_(close.logical_not_())
        if not bool(active.any()):
            break
        live = active.unsqueeze(1)
        magnitude.masked_fill_((x == x_max).logical_and_(live), math.inf)
        threshold = lower_quantile(magnitude, walk.fraction)
        chosen = (magnitude <= threshold.unsqueeze(1)).logical_and_(magnitude != math.inf).logical_and_(live)
        reach = (x_max - x).abs_().mul_(chosen).sum(1)
        share = torch.where(reach > 0, gap / torch.where(reach > 0, reach, 1.0), math.inf)
        whole = share > 1
        moved_to = torch.where(whole.unsqueeze(1), x_max, x + (x_max - x) * share.unsqueeze(1))
        x = torch.where(chosen, moved_to, x)
        # An example whose chosen features closed the gap is done with this step.
        active = active.logical_and_(whole)
    return x


def lower_quantile(values: Tensor, q: float) -> Tensor:
    """Per row, the ``q``-quantile of ``values`` that is an element of the row: the ``⌊q (D − 1)⌋``-th smallest, as
    ``numpy.quantile(method="lower")`` takes it."""
    k = math.floor((values.shape[1] - 1) * q)
    return torch.kthvalue(values, k + 1, dim=1).values


class DisplacementSum(Reduction):
    """Σ over steps of each row's gradient times displacement (the rows' ``grads``), per example; the outputs of
    the first step are kept (``first_values``: ``F(x′)``)."""

    def __init__(self, line: StraightLine):
        self.line = line
        self.sums: list[Tensor] | None = None
        self.first_values: Tensor | None = None

    def add(self, grads: list[Tensor], values: Tensor, first: int, count: int, tiled: bool) -> None:
        if first == 0:
            self.first_values = values.to(torch.float64)
        if self.sums is None:
            self.sums = [g.clone() for g in grads]
        else:
            for s, g in zip(self.sums, grads):
                s += g

    def attributions(self) -> list[Tensor]:
        if self.sums is None:
            return [torch.zeros(x.shape, dtype=torch.float64, device=x.device) for x in self.line.like]
        return [s.view(x.shape) for s, x in zip(self.sums, self.line.like)]


def _flat(tensors: tuple[Tensor, ...]) -> Tensor:
    """``(B, D)`` float64: every feature of an example, all tensors together."""
    return torch.cat([t.reshape(t.shape[0], -1).to(torch.float64) for t in tensors], 1)


def _unflat(flat: Tensor, like: tuple[Tensor, ...]) -> list[Tensor]:
    sizes = [math.prod(t.shape[1:]) for t in like]
    return [part.reshape(t.shape) for part, t in zip(flat.split(sizes, 1), like)]
