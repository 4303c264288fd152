"""Expected Gradients: integrated gradients averaged over a background distribution of baselines."""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
from torch import Tensor

from .. import arguments
from ..engine import IntegrationReport, Probe, Reduction, Rows, WeightedSum, evaluate_rows, probe_values
from ..paths import PairedLine, Path, Points, moved
from .base import PathAttribution, keeps_model_state, output_probe, restore_structure

TensorOrTuple = Tensor | tuple[Tensor, ...]


def pair_probe(probe: Probe, example_of: Tensor) -> Probe:
    """``probe`` evaluated on pairs: a row of pair ``p`` takes the target and extra arguments of example
    ``example_of[p]``."""
    cache: dict[torch.device, Tensor] = {}

    def on_pairs(points: Points, pairs: Tensor) -> Tensor:
        if pairs.device not in cache:
            cache[pairs.device] = example_of.to(pairs.device)
        return probe(points, cache[pairs.device].index_select(0, pairs))

    return on_pairs


def evaluate_sampled(
    method: PathAttribution, probe: Probe, path: Path, rows: Rows, reduction: Reduction, settings: dict
) -> IntegrationReport:
    """Evaluate rows that a method laid out itself (sampled positions) under the call's chunking, with what earlier
    calls learned about rows of these shapes, as :meth:`PathAttribution._integrate` does for a fixed rule."""
    with method._chunking(path, settings) as chunking:
        evaluate_rows(probe, path, rows, reduction, chunking, keep_values=False)
    steps = torch.bincount(rows.buckets.cpu(), minlength=rows.n_buckets)
    return IntegrationReport.of(chunking, steps)


class ExpectedGradients(PathAttribution):
    r"""Expected Gradients: integrated gradients averaged over a background distribution ``D`` of baselines,

    ``φ_i(x) = E_{x′∼D, α∼U(0,1)} [ (x_i − x′_i) ∂F(x′ + α (x − x′)) / ∂x_i ]``.

    Two estimators of the same expectation:

    * random (``n_steps=None``, the paper's): each example gets ``n_samples`` rows, each with a background row
      ``x′`` drawn uniformly and ``α ∼ U(0, 1)``, and the mean of ``(x − x′) ⊙ ∇F(x′ + α (x − x′))`` over them;
    * deterministic (``n_steps=k`` or ``"auto"``): the expectation over ``α`` is the integral of integrated
      gradients, computed with a quadrature rule, so that the result is the mean over the background of
      :class:`~integrad.IntegratedGradients` (exact up to quadrature; far faster to converge than sampling ``α``).
      With more than ``n_samples`` background rows, each example is integrated against ``n_samples`` of them,
      drawn without replacement.

    The attributions add up to ``F(x) − mean F(x′)`` over the baselines used (completeness), in expectation for the
    random estimator and up to quadrature for the deterministic one.

    Parameters
    ----------
    forward_func : callable
        Model or function; called as ``forward_func(*inputs, *additional_forward_args)``.
    multiply_by_inputs : bool, default True
        Multiply each gradient by ``x − x′`` (global attribution). With False the result is the expected gradient
        alone, ``E[∇F(x′ + α (x − x′))]``.

    Notes
    -----
    Every pair (example, background row) is a straight line (:class:`PairedLine`), and all rows of all pairs are
    one expanded batch evaluated in chunks under the memory budget. Random draws come from ``generator`` (torch's
    global generator when None), in this order: the background rows of every example's samples,
    ``torch.randint(M, (B, n_samples))``, then the positions, ``torch.rand((B, n_samples), dtype=torch.float64)``;
    in deterministic mode with ``M > n_samples``, one ``torch.rand((B, M), dtype=torch.float64)`` whose
    ``argsort`` along each row picks the rows. Both on the generator's device.

    References
    ----------
    Erion, Janizek, Sturmfels, Lundberg, Lee. Improving performance of deep learning models with axiomatic
    attribution priors and expected gradients. Nature Machine Intelligence 3, 620–631, 2021.
    https://arxiv.org/abs/1906.10670
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017. https://arxiv.org/abs/1703.01365
    """

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        n_samples: int = 50,
        n_steps: int | str | None = None,
        method: str = "gausslegendre",
        generator: torch.Generator | None = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        *,
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        n_samples: int = 50,
        n_steps: int | str | None = None,
        method: str = "gausslegendre",
        generator: torch.Generator | None = None,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        memory_budget: int | str | None = None,
        tolerance: float = 1e-3,
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @keeps_model_state
    def attribute(
        self,
        inputs,
        baselines,
        target=None,
        additional_forward_args=None,
        n_samples=50,
        n_steps=None,
        method="gausslegendre",
        generator=None,
        internal_batch_size=None,
        return_convergence_delta=False,
        *,
        memory_budget=None,
        tolerance=1e-3,
    ):
        """Expected gradients of ``forward_func``'s output at ``target`` for each input feature.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point tensors whose dim 0 is the batch; the same structure and shapes come back.
        baselines : Tensor or tuple of Tensor
            The background distribution: ``M`` rows shaped ``(M, *x.shape[1:])``, or for tuple inputs a tuple of
            such tensors with the same ``M`` (row ``m`` of every tensor makes one baseline).
        target, additional_forward_args
            As in :meth:`IntegratedGradients.attribute`.
        n_samples : int, default 50
            Random mode: rows per example. Deterministic mode: the most background rows each example is integrated
            against.
        n_steps : None, int or "auto", default None
            None samples ``α`` (random mode); an int integrates along every (example, baseline) line with ``method``
            and that many points; ``"auto"`` chooses the points per line until the estimated relative L1 error is
            below ``tolerance``.
        method : str, default "gausslegendre"
            The rule of deterministic mode (see :meth:`IntegratedGradients.attribute`).
        generator : torch.Generator, optional
            The source of every random draw (see Notes of the class): the same seed and the same batch give the
            same result. The batch's draws come from one stream, so in random mode an example's estimate depends on
            its place in the batch (the deterministic mode's does not).
        internal_batch_size : int, optional
            Rows per forward pass. Default: chosen from ``memory_budget``.
        return_convergence_delta : bool, default False
            Also return ``Σ attributions − (F(x) − mean F(x′))`` per example, the mean over the baselines each
            example's rows started from.
        memory_budget : int or str, optional
            Bytes a forward/backward chunk may use, e.g. ``"256MiB"``.
        tolerance : float, default 1e-3
            Relative L1 error target per line for ``n_steps="auto"``.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``: one value per example.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        device = inputs_t[0].device
        deterministic = n_steps is not None
        if deterministic and not (n_steps == "auto" or (arguments.is_int(n_steps) and n_steps >= 1)):
            raise ValueError(
                f"n_steps must be None (random positions), a positive int or 'auto' (a rule); got {n_steps!r}"
            )
        settings = self._rule_settings(
            n_steps if deterministic else 1, method, internal_batch_size, memory_budget, tolerance, device
        )
        background = background_rows(baselines, inputs_t, was_tuple)
        n_samples = arguments.check_positive_int("n_samples", n_samples, allow_none=False)
        generator = _check_generator(generator)
        batch = inputs_t[0].shape[0]
        target_t = arguments.normalize_target(target, batch, device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
        ends = tuple(x.detach() for x in inputs_t)
        plain = output_probe(self.forward_func, lambda points, examples: points, target_t, args, per_example)
        m = background[0].shape[0]
        if deterministic:
            start_rows, end_rows = _all_or_drawn_rows(batch, m, n_samples, generator)
            path = PairedLine(background, (start_rows,) * len(ends), ends, end_rows, factored=True)
            result = self._integrate(pair_probe(plain, end_rows), path, settings, need_ends=False)
            grads = _mean_over_pairs(result.grads, path, batch, self._multiply_by_inputs)
        else:
            path, grads = self._sampled(plain, background, ends, n_samples, generator, settings)
            end_rows = path.end_rows.cpu()
        attributions = tuple(moved(g, g.device, x.dtype) for g, x in zip(grads, inputs_t))
        if not return_convergence_delta:
            return restore_structure(attributions, was_tuple)
        self.last_report.delta = _mean_baseline_delta(attributions, plain, path, end_rows, settings)
        return restore_structure(attributions, was_tuple), self.last_report.delta

    def _sampled(
        self,
        plain: Probe,
        background: tuple[Tensor, ...],
        ends: tuple[Tensor, ...],
        n_samples: int,
        generator: torch.Generator | None,
        settings: dict,
    ) -> tuple[PairedLine, list[Tensor]]:
        """Random mode: ``n_samples`` rows per example, each on its own line at its own position, and the mean of
        their contributions per example."""
        batch = ends[0].shape[0]
        start_rows, alphas = _sampled_rows(batch, background[0].shape[0], n_samples, generator)
        end_rows = torch.arange(batch).repeat_interleave(n_samples)
        # Every row carries its own velocity: one sum per example mixes rows of different lines.
        path = PairedLine(background, (start_rows,) * len(ends), ends, end_rows, factored=not self._multiply_by_inputs)
        total = end_rows.shape[0]
        weights = torch.full((total, 1), 1.0 / n_samples, dtype=torch.float64)
        rows = Rows(torch.arange(total), alphas, weights, end_rows, batch)
        reduction = WeightedSum(rows, path)
        self.last_report = evaluate_sampled(self, pair_probe(plain, end_rows), path, rows, reduction, settings)
        return path, [s[0] for s in reduction.sums]


def background_rows(baselines: Any, inputs: tuple[Tensor, ...], was_tuple: bool) -> tuple[Tensor, ...]:
    """The background distribution as one ``(M, *x.shape[1:])`` tensor per input, with the same ``M``, on the inputs'
    device and in their dtypes."""
    accepted = "a tensor of background rows shaped (M, *input.shape[1:])" + (
        ", one per input in a tuple, all with the same M" if was_tuple else ""
    )
    parts = baselines if isinstance(baselines, tuple) else (baselines,)
    if was_tuple != isinstance(baselines, tuple) or len(parts) != len(inputs):
        raise ValueError(f"baselines must be {accepted}; got {_described(baselines)} for {len(inputs)} input(s)")
    rows = []
    for i, (b, x) in enumerate(zip(parts, inputs)):
        where = f"baselines[{i}]" if was_tuple else "baselines"
        if not isinstance(b, Tensor):
            raise TypeError(f"{where} must be {accepted}; got {type(b).__name__}")
        if b.dim() != x.dim() or tuple(b.shape[1:]) != tuple(x.shape[1:]) or b.shape[0] == 0:
            raise ValueError(
                f"{where} has shape {tuple(b.shape)}; background rows for an input of shape {tuple(x.shape)} must be "
                f"shaped (M, {', '.join(str(s) for s in x.shape[1:])}) with M >= 1"
            )
        rows.append(b.detach().to(device=x.device, dtype=x.dtype))
    sizes = [b.shape[0] for b in rows]
    if len(set(sizes)) > 1:
        raise ValueError(f"baselines must have the same number of rows M in every tensor; got {sizes}")
    return tuple(rows)


def _described(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple):
        return f"a tuple of length {len(value)}"
    return type(value).__name__


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    return generator


def _draw_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _sampled_rows(batch: int, m: int, n_samples: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """A background row and a position ``α ∼ U(0, 1)`` for each of ``n_samples`` rows per example (example-major)."""
    device = _draw_device(generator)
    start_rows = torch.randint(m, (batch, n_samples), generator=generator, device=device)
    alphas = torch.rand((batch, n_samples), generator=generator, dtype=torch.float64, device=device)
    return start_rows.reshape(-1).cpu(), alphas.reshape(-1).cpu()


def _all_or_drawn_rows(batch: int, m: int, n_samples: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The (background row, example) of every pair: all ``M`` rows per example, or ``n_samples`` of them drawn
    without replacement when there are more."""
    if m <= n_samples:
        return torch.arange(m).repeat(batch), torch.arange(batch).repeat_interleave(m)
    keys = torch.rand((batch, m), generator=generator, dtype=torch.float64, device=_draw_device(generator))
    chosen = keys.argsort(dim=1)[:, :n_samples].cpu()
    return chosen.reshape(-1), torch.arange(batch).repeat_interleave(n_samples)


def _mean_over_pairs(grads: list[Tensor], path: PairedLine, batch: int, multiply: bool) -> list[Tensor]:
    """Per example, the mean over its pairs (consecutive) of each pair's integral, times the pair's velocity for
    global attribution."""
    pairs = path.batch // batch
    out = []
    for g, v in zip(grads, path.velocity):
        per_pair = g * v.to(g.dtype) if multiply else g
        out.append(per_pair.view((batch, pairs) + tuple(g.shape[1:])).sum(1) / pairs)
    return out


def _mean_baseline_delta(
    attributions: tuple[Tensor, ...], probe: Probe, path: PairedLine, end_rows: Tensor, settings: dict
) -> Tensor:
    """``Σ attributions − (F(x) − mean F(x′))`` per example, the mean over the starts of the example's pairs."""
    batch = attributions[0].shape[0]
    chunking = settings["chunking"].fresh()
    starts, _ = path.ends()
    f_starts = probe_values(probe, starts, end_rows, chunking)
    f_inputs = probe_values(probe, path.end_sets, torch.arange(batch), chunking)
    counts = torch.bincount(end_rows, minlength=batch).to(torch.float64)
    mean_start = torch.zeros(batch, dtype=torch.float64).index_add_(0, end_rows, f_starts) / counts
    total = sum(a.detach().to(torch.float64).reshape(batch, -1).sum(1).cpu() for a in attributions)
    dtype = torch.float64 if any(a.dtype == torch.float64 for a in attributions) else torch.float32
    return (total - (f_inputs - mean_start)).to(device=attributions[0].device, dtype=dtype)
