"""GradientShap and LayerGradientShap: expected gradients over noisy inputs, drawn as captum draws them."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor, nn

from .. import arguments
from ..engine import Rows, WeightedSum, probe_values, run_chunked
from ..paths import PairedLine, Path, Points, moved
from ..probes import RepeatedLayerCall, TargetProbe, check_layer, run_until, scoped_hooks
from .base import (
    InputConvergenceDelta,
    LayerConvergenceDelta,
    PathAttribution,
    keeps_model_state,
    output_probe,
    restore_structure,
)
from .expected_gradients import evaluate_sampled, pair_probe
from .layer import LayerIntegratedGradients

TensorOrTuple = Tensor | tuple[Tensor, ...]


class GradientShap(InputConvergenceDelta, PathAttribution):
    r"""GradientShap: SHAP values approximated by expected gradients over Gaussian-noised inputs.

    For each example ``x`` and each of ``n = n_samples`` rows ``k``: a noisy input ``x̃_k = x + ε_k``
    (``ε_k ∼ N(0, σ²)``), a baseline ``b_k`` drawn from the distribution given as ``baselines`` and a position
    ``α_k ∼ U(0, 1)``; then

    ``A = (1/n) Σ_k (x̃_k − b_k) ⊙ ∇F(b_k + α_k (x̃_k − b_k))``,

    a one-point sample of the integrated gradients from ``b_k`` to ``x̃_k`` per row. The rows of all examples are
    one expanded batch (a :class:`~integrad.paths.PairedLine` per row, each at its own ``α``),
    evaluated in chunks under the memory budget.

    A drop-in replacement for ``captum.attr.GradientShap``: after the same ``torch.manual_seed`` and
    ``np.random.seed`` the results are captum's. The draws are captum's, in its order: for each input whose
    baseline is a tensor, the baseline rows ``numpy.random.choice(M, B·n)`` (each input its own draw, so the
    inputs of a tuple are not paired); then for each input the noise ``torch.normal(0, σ)`` of shape
    ``(B·n, *x.shape[1:])`` in the default dtype (drawn even for ``σ = 0``, which keeps torch's generator where
    captum leaves it); then the positions ``numpy.random.uniform(0, 1, B·n)``. Row ``i·n + k`` is sample ``k`` of
    example ``i``. The points are formed as ``b + α (x̃ − b)`` (captum: ``α x̃ + (1 − α) b``), equal up to
    rounding; noisy half-precision inputs stay in their dtype (captum's become float32).

    Parameters
    ----------
    forward_func : callable
        Model or function; called as ``forward_func(*inputs, *additional_forward_args)``.
    multiply_by_inputs : bool, default True
        Multiply each row's gradient by ``x̃_k − b_k`` (global attribution); with False the mean gradient alone.

    References
    ----------
    Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.
    https://arxiv.org/abs/1705.07874
    Erion, Janizek, Sturmfels, Lundberg, Lee. Improving performance of deep learning models with axiomatic
    attribution priors and expected gradients. Nature Machine Intelligence 3, 2021. https://arxiv.org/abs/1906.10670
    Smilkov, Thorat, Kim, Viégas, Wattenberg. SmoothGrad: removing noise by adding noise. 2017.
    https://arxiv.org/abs/1706.03825
    """

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: TensorOrTuple | Callable,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: Literal[False] = False,
        *,
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: TensorOrTuple | Callable,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        *,
        return_convergence_delta: Literal[True],
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @keeps_model_state
    def attribute(
        self,
        inputs,
        baselines,
        n_samples=5,
        stdevs=0.0,
        target=None,
        additional_forward_args=None,
        return_convergence_delta=False,
        *,
        internal_batch_size=None,
        memory_budget=None,
    ):
        """GradientShap attributions of ``forward_func``'s output at ``target``.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point tensors whose dim 0 is the batch; the same structure and shapes come back.
        baselines : Tensor, tuple or callable
            The baseline distribution: a tensor of ``M`` rows shaped ``(M, *x.shape[1:])`` (a tuple of those for
            tuple inputs; a number in the tuple is one fixed baseline for its input), or a callable returning it,
            called with no argument or with ``inputs``.
        n_samples : int, default 5
            Rows per example.
        stdevs : float or tuple of float, default 0.0
            Standard deviation of the input noise, one for all inputs or one per input.
        target, additional_forward_args
            As in :meth:`IntegratedGradients.attribute`.
        return_convergence_delta : bool, default False
            Also return, for each of the ``B·n`` rows (example-major), ``Σ row attributions − (F(x̃_k) − F(b_k))``,
            as captum does.
        internal_batch_size : int, optional
            Rows per forward pass. Default: chosen from ``memory_budget``.
        memory_budget : int or str, optional
            Bytes a forward/backward chunk may use, e.g. ``"256MiB"``.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``: ``(B·n,)``.
        """
        call = _Sampled(
            self,
            inputs,
            baselines,
            n_samples,
            stdevs,
            target,
            additional_forward_args,
            return_convergence_delta,
            internal_batch_size,
            memory_budget,
        )
        line = call.draw()
        plain = output_probe(self.forward_func, lambda points, examples: points, call.target, call.args, call.flags)
        probe = pair_probe(plain, call.example_of)
        path = PairedLine(line.start_sets, line.start_rows, line.end_sets, line.end_rows, not self._multiply_by_inputs)
        reduction = call.run(probe, path)
        attributions = call.means(reduction, [x.dtype for x in call.inputs])
        if not call.want_delta:
            return restore_structure(attributions, call.was_tuple)
        delta = call.delta(reduction, probe, line)
        return restore_structure(attributions, call.was_tuple), delta


class LayerGradientShap(LayerConvergenceDelta, PathAttribution):
    r"""GradientShap with respect to a layer's value (its output, or its input).

    With ``h`` the layer's value and the rows of :class:`GradientShap` (noisy input ``x̃_k``, drawn baseline
    ``b_k``, position ``α_k``):

    ``A = (1/n) Σ_k (h(x̃_k) − h(b_k)) ⊙ ∂F/∂h (b_k + α_k (x̃_k − b_k))``,

    the gradient with respect to the layer taken where the model runs on the input-space point. It is evaluated as
    the gradient with respect to an offset added to the layer's value (zero at every row), so each row costs one
    forward and one backward pass of the model, in chunks under the memory budget.

    A drop-in replacement for ``captum.attr.LayerGradientShap``: the same random draws in the same order as
    :class:`GradientShap`, and captum's results after the same seeds.

    Parameters
    ----------
    forward_func : callable
        The model or a function of the inputs.
    layer : torch.nn.Module
        The layer whose value is attributed to; it must run once per forward pass, and its value must be a
        floating-point tensor or a tuple of them.
    device_ids : list of int, optional
        Accepted for compatibility with captum.
    multiply_by_inputs : bool, default True
        Multiply by ``h(x̃_k) − h(b_k)``.

    References
    ----------
    Lundberg, Lee. A Unified Approach to Interpreting Model Predictions. NeurIPS 2017.
    https://arxiv.org/abs/1705.07874
    Shrikumar, Greenside, Kundaje. Learning Important Features Through Propagating Activation Differences (layer
    attributions as gradients with respect to hidden units). ICML 2017. https://arxiv.org/abs/1704.02685
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        device_ids: list[int] | None = None,
        multiply_by_inputs: bool = True,
    ):
        super().__init__(forward_func, multiply_by_inputs)
        check_layer(forward_func, layer)
        self.layer = layer
        self.device_ids = device_ids

    @keeps_model_state
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: TensorOrTuple | Callable,
        n_samples: int = 5,
        stdevs: float | tuple[float, ...] = 0.0,
        target: Any = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        *,
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
    ) -> Any:
        """GradientShap attributions to the layer's value.

        Parameters are those of :meth:`GradientShap.attribute`, and ``attribute_to_layer_input=True`` attributes to
        the layer's input instead of its output.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Shaped like the layer's value (a tuple for a layer whose value is one), in its dtype.
        delta : Tensor
            Only with ``return_convergence_delta=True``: per row (example-major), ``Σ row attributions −
            (F(x̃_k) − F(b_k))``.
        """
        use_input = arguments.check_bool("attribute_to_layer_input", attribute_to_layer_input)
        call = _Sampled(
            self,
            inputs,
            baselines,
            n_samples,
            stdevs,
            target,
            additional_forward_args,
            return_convergence_delta,
            internal_batch_size,
            memory_budget,
        )
        line = call.draw()
        starts, ends = line.ends()
        values = _layer_values(
            self.hooked_forward, self.layer, use_input, call, tuple(torch.cat([e, s]) for s, e in zip(starts, ends))
        )
        structure = isinstance(values, tuple)
        parts = values if structure else (values,)
        pairs = line.batch
        shift = _LayerOffsets(tuple(p[:pairs] - p[pairs:] for p in parts), factored=not self._multiply_by_inputs)
        alphas = moved(call.alphas, line.device, line.compute)
        select = TargetProbe(call.target)
        example_of = call.example_of.to(line.device)

        def probe(offsets: Points, rows: Tensor) -> Tensor:
            points, _ = line.at(rows, alphas.index_select(0, rows))
            examples = example_of.index_select(0, rows)
            extra = arguments.select_rows(call.args, call.flags, examples)
            with _shifted(self.layer, offsets, structure, use_input):
                return select(self.hooked_forward(*points, *extra), examples)

        reduction = call.run(probe, shift)
        attributions = call.means(reduction, [p.dtype for p in parts])
        out = attributions if structure else attributions[0]
        if not call.want_delta:
            return out
        plain = output_probe(self.forward_func, lambda points, examples: points, call.target, call.args, call.flags)
        return out, call.delta(reduction, pair_probe(plain, call.example_of), line)

    interpolate = staticmethod(LayerIntegratedGradients.interpolate)


class _RowTotals(WeightedSum):
    """The sum per example, and each row's contributions summed over its features (float64), for the per-row
    convergence delta."""

    def __init__(self, rows: Rows, path: Path):
        super().__init__(rows, path)
        self.totals = torch.zeros(rows.total, dtype=torch.float64, device=path.device)

    def add(self, grads: list[Tensor], values: Tensor, first: int, count: int, tiled: bool) -> None:
        super().add(grads, values, first, count, tiled)
        self.totals[first : first + count] = sum(g.reshape(count, -1).sum(1, dtype=torch.float64) for g in grads)


class _LayerOffsets(Path):
    """Offsets added to a layer's value, zero at every row: the gradient with respect to them is the gradient with
    respect to the layer where the model runs on the row's own input point. The velocity of a row is its
    ``h(x̃) − h(b)``."""

    def __init__(self, differences: Points, factored: bool):
        super().__init__(differences)
        self.differences = differences
        self.velocity_factored = factored

    def at(self, examples: Tensor, alphas: Tensor) -> tuple[Points, Points | None]:
        zeros = tuple(
            torch.zeros((examples.shape[0],) + tuple(d.shape[1:]), dtype=d.dtype, device=d.device)
            for d in self.differences
        )
        if self.velocity_factored:
            return zeros, None
        return zeros, tuple(d.index_select(0, examples) for d in self.differences)


@contextlib.contextmanager
def _shifted(layer: nn.Module, offsets: Points, structure: bool, use_input: bool) -> Iterator[None]:
    """During one forward pass, add ``offsets`` to the layer's value (output, or input with ``use_input``); only in
    the passes run inside the ``with`` block, in this thread (see :func:`integrad.probes.scoped_hooks`)."""
    calls = []

    def shift(value: Any) -> Any:
        calls.append(True)
        if len(calls) > 1:
            raise RepeatedLayerCall(layer)
        parts = value if structure else (value,)
        shifted = tuple(p + o for p, o in zip(parts, offsets))
        return shifted if structure else shifted[0]

    def on_input(module: nn.Module, args: tuple) -> tuple:
        return shift(args) if len(args) > 1 else (shift(args[0]),)

    def on_output(module: nn.Module, args: tuple, output: Any) -> Any:
        return shift(output)

    with scoped_hooks([layer], [on_input if use_input else on_output], use_input):
        yield


def _layer_values(
    forward_func: Callable, layer: nn.Module, use_input: bool, call: _Sampled, points: Points
) -> Tensor | tuple[Tensor, ...]:
    """The layer's value at ``points``: the rows' noisy inputs, then their baselines (``2·P`` rows), without
    gradients, in chunks."""
    pairs = points[0].shape[0] // 2
    examples = call.example_of.repeat(2)

    def run(rows: slice) -> Any:
        extra = arguments.select_rows(call.args, call.flags, examples[rows])
        return run_until(forward_func, [layer], use_input, tuple(p[rows] for p in points) + extra)[0]

    with torch.no_grad():
        chunks = run_chunked(run, 2 * pairs, call.settings["chunking"])
    first = chunks[0]
    parts = [c if isinstance(c, tuple) else (c,) for c in chunks]
    if not all(isinstance(p, Tensor) and p.is_floating_point() for p in parts[0]):
        raise TypeError(
            f"layer {type(layer).__name__} produced a value that is not a floating-point tensor or a tuple of them, "
            "so it has no gradient to attribute with"
        )
    joined = tuple(torch.cat(p) if len(parts) > 1 else p[0] for p in zip(*parts))
    return joined if isinstance(first, tuple) else joined[0]


class _Sampled:
    """One call of GradientShap or LayerGradientShap: its checked arguments, captum's draws, the rows and the
    per-row delta."""

    def __init__(
        self,
        method: PathAttribution,
        inputs: Any,
        baselines: Any,
        n_samples: Any,
        stdevs: Any,
        target: Any,
        additional_forward_args: Any,
        want_delta: Any,
        internal_batch_size: Any,
        memory_budget: Any,
    ):
        self.method = method
        self.want_delta = arguments.check_bool("return_convergence_delta", want_delta)
        self.inputs, self.was_tuple = arguments.normalize_inputs(inputs)
        device = self.inputs[0].device
        self.settings = method._rule_settings(1, "gausslegendre", internal_batch_size, memory_budget, 1e-3, device)
        self.n = arguments.check_positive_int("n_samples", n_samples, allow_none=False)
        self.sigmas = arguments.check_stdevs(stdevs, len(self.inputs))
        self.batch = self.inputs[0].shape[0]
        self.target = arguments.normalize_target(target, self.batch, device)
        self.args, self.flags = arguments.normalize_additional_args(additional_forward_args, self.batch)
        # A callable baseline runs after the checks and before any draw, as in captum (it may draw itself).
        self.distribution = baseline_distribution(baselines, inputs, self.inputs, self.was_tuple)
        self.example_of = torch.arange(self.batch).repeat_interleave(self.n)
        self.alphas: Tensor | None = None

    def draw(self) -> PairedLine:
        """captum's draws, in its order: baseline rows per input (numpy), noise per input (torch), positions
        (numpy). Returns the lines from each row's baseline to its noisy input, factored."""
        pairs = self.batch * self.n
        start_rows = []
        for b, drawn in zip(*self.distribution):
            rows = np.random.choice(b.shape[0], pairs) if drawn else np.zeros(pairs, dtype=np.int64)
            start_rows.append(torch.from_numpy(rows).long())
        noisy = tuple(_noisy(x, sigma, self.n) for x, sigma in zip(self.inputs, self.sigmas))
        self.alphas = torch.from_numpy(np.random.uniform(0.0, 1.0, pairs))
        return PairedLine(self.distribution[0], tuple(start_rows), noisy, torch.arange(pairs), factored=True)

    def run(self, probe, path: Path) -> _RowTotals:
        rows = Rows(
            torch.arange(path.batch),
            self.alphas,
            torch.ones(path.batch, 1, dtype=torch.float64),
            self.example_of,
            self.batch,
        )
        reduction = _RowTotals(rows, path)
        self.method.last_report = evaluate_sampled(self.method, probe, path, rows, reduction, self.settings)
        return reduction

    def means(self, reduction: _RowTotals, dtypes: list[torch.dtype]) -> tuple[Tensor, ...]:
        """The mean over each example's rows: captum's sum divided by ``n``."""
        return tuple(moved(s[0] / self.n, s.device, dt) for s, dt in zip(reduction.sums, dtypes))

    def delta(self, reduction: _RowTotals, probe, line: PairedLine) -> Tensor:
        """Per row, ``Σ its attributions − (F(x̃_k) − F(b_k))``, in the float64 or float32 of the inputs."""
        starts, ends = line.ends()
        pairs = line.batch
        both = tuple(torch.cat([e, s]) for s, e in zip(starts, ends))
        values = probe_values(probe, both, torch.arange(pairs).repeat(2), self.settings["chunking"].fresh())
        delta = reduction.totals.cpu() - (values[:pairs] - values[pairs:])
        dtype = torch.float64 if any(x.dtype == torch.float64 for x in self.inputs) else torch.float32
        self.method.last_report.delta = delta.to(device=self.inputs[0].device, dtype=dtype)
        return self.method.last_report.delta


def _noisy(x: Tensor, sigma: float, n: int) -> Tensor:
    """``n`` copies of every example (example-major) plus captum's noise, ``torch.normal(0, σ)`` of the stacked
    shape in the default dtype; in the input's dtype."""
    stacked = x.detach().repeat_interleave(n, dim=0)
    scale = torch.full(stacked.shape, sigma, dtype=torch.get_default_dtype(), device=x.device)
    noisy = stacked + torch.normal(0.0, scale)
    return noisy if noisy.dtype == x.dtype else noisy.to(x.dtype)


def baseline_distribution(
    baselines: Any, given: Any, inputs: tuple[Tensor, ...], was_tuple: bool
) -> tuple[tuple[Tensor, ...], tuple[bool, ...]]:
    """The baseline distribution as one ``(M_i, *x.shape[1:])`` tensor per input, and whether rows are drawn from
    it (a number in a tuple is one fixed row, never drawn), after calling ``baselines`` when it is a callable (with
    no argument, or with the inputs as given)."""
    if callable(baselines) and not isinstance(baselines, Tensor):
        baselines = baselines() if not inspect.signature(baselines).parameters else baselines(given)
    accepted = (
        "a tensor of baseline rows shaped (M, *input.shape[1:])"
        + (", or a tuple with one such tensor (or a number) per input" if was_tuple else "")
        + ", or a callable returning that"
    )
    parts = baselines if isinstance(baselines, tuple) else (baselines,)
    if len(parts) != len(inputs) or (was_tuple and not isinstance(baselines, tuple)):
        raise ValueError(f"baselines must be {accepted}; got {len(parts)} baseline(s) for {len(inputs)} input(s)")
    out, drawn = [], []
    for i, (b, x) in enumerate(zip(parts, inputs)):
        where = f"baselines[{i}]" if was_tuple else "baselines"
        drawn.append(not arguments.is_real(b))
        if arguments.is_real(b) and was_tuple:
            out.append(torch.full((1,) + tuple(x.shape[1:]), float(b), dtype=x.dtype, device=x.device))
            continue
        if not isinstance(b, Tensor):
            raise TypeError(f"{where} must be {accepted}; got {type(b).__name__}")
        if b.dim() != x.dim() or tuple(b.shape[1:]) != tuple(x.shape[1:]) or b.shape[0] == 0:
            raise ValueError(
                f"{where} has shape {tuple(b.shape)}; a baseline distribution for an input of shape "
                f"{tuple(x.shape)} must be shaped (M, {', '.join(str(s) for s in x.shape[1:])}) with M >= 1"
            )
        out.append(b.detach().to(device=x.device, dtype=x.dtype))
    return tuple(out), tuple(drawn)
