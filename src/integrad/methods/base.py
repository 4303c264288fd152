"""What every path method shares: argument handling, the choice of rule, and the convergence delta."""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import arguments
from ..engine import (
    Chunking,
    IntegrationReport,
    PathIntegral,
    Probe,
    RowShapes,
    integrate,
    integrate_adaptive,
    rule_rows,
    run_chunked,
)
from ..engine.evaluate import accumulation_dtype, end_values
from ..paths import Path, moved
from ..probes import TargetProbe, uncompiled
from ..rules import alphas_and_weights

#: Modules whose forward in training mode makes a row's output random, or dependent on the other rows run with it.
TRAINING_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


#: Batch-norm buffers saved by calls still running, by ``id``: ``[calls, buffer, value before the first call]``.
#: Calls on one model may overlap (threads): the first saves, the last puts back, so that a call starting while
#: another has already updated the statistics does not save (and later restore) the other's updates.
_HELD_BUFFERS: dict[int, list] = {}
_HOLDING = threading.Lock()


def training_state_saved(model: Any, name: str, stacklevel: int) -> list | None:
    """For a model in training mode with dropout or batch norm: warn (its outputs are random, or depend on which rows
    run together) and return its batch-norm running statistics, which every forward in training mode updates, to be
    put back by :func:`restore_training_state`. None for any other model."""
    if not (isinstance(model, nn.Module) and model.training):
        return None
    sensitive = [m for m in model.modules() if m.training and isinstance(m, TRAINING_SENSITIVE)]
    if not sensitive:
        return None
    names = ", ".join(sorted({type(m).__name__ for m in sensitive}))
    warnings.warn(
        f"{name} is in training mode, where {names} make a row's output random (dropout) or dependent on the other "
        "rows evaluated with it (batch statistics): the results are not those of the model in use, and change with "
        "the chunking. Call model.eval() first",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )
    buffers = [b for m in sensitive if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers(recurse=False)]
    with _HOLDING:
        for b in buffers:
            held = _HELD_BUFFERS.setdefault(id(b), [0, b, None])
            if held[0] == 0:
                held[2] = b.detach().clone()
            held[0] += 1
        return [(b, _HELD_BUFFERS[id(b)][2]) for b in buffers]


def restore_training_state(saved: list | None) -> None:
    """Put back what :func:`training_state_saved` saved, once the last overlapping call on the model is done."""
    if not saved:
        return
    with _HOLDING, torch.no_grad():
        for buffer, _ in saved:
            held = _HELD_BUFFERS.get(id(buffer))
            if held is None or held[1] is not buffer:
                continue
            held[0] -= 1
            if held[0] == 0:
                buffer.copy_(held[2])
                del _HELD_BUFFERS[id(buffer)]


def keeps_model_state(attribute: Callable) -> Callable:
    """Wrap a method that runs ``self.forward_func`` with :func:`training_state_saved`: a model in training mode
    with dropout or batch norm gets a warning, and its batch-norm running statistics are put back afterwards."""

    @functools.wraps(attribute)
    def wrapper(self, *args, **kwargs):
        saved = training_state_saved(self.forward_func, "forward_func", stacklevel=2)
        try:
            return attribute(self, *args, **kwargs)
        finally:
            restore_training_state(saved)

    return wrapper


class _PerThread:
    def __init__(self) -> None:
        self.local = threading.local()
        self.latest: Any = None


class LatestPerThread:
    """An attribute whose value is the one last set in the reading thread; in a thread that has set none, the one
    last set in any thread.

    An attribution object may serve calls from several threads at once (a thread pool sharing one model): what a
    call records for its caller (``last_report``) must reach that caller, not whichever call finished last. Setting
    None forgets the value of the setting thread.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}_per_thread"

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        holder = obj.__dict__.get(self.slot)
        if holder is None:
            return None
        return getattr(holder.local, "value", holder.latest)

    def __set__(self, obj: Any, value: Any) -> None:
        holder = obj.__dict__.get(self.slot) or obj.__dict__.setdefault(self.slot, _PerThread())
        holder.latest = value
        if value is None:
            holder.local.__dict__.pop("value", None)
        else:
            holder.local.value = value


class PathAttribution:
    """Base of the integrated-gradients family.

    Parameters
    ----------
    forward_func : callable
        The model or any function of the inputs returning a tensor whose dim 0 is the batch.
    multiply_by_inputs : bool
        Multiply the integrated gradients by ``(x − x′)`` ("global" attribution, the IG of the paper) or return
        the path-averaged gradient alone ("local" attribution).

    Attributes
    ----------
    last_report : IntegrationReport or None
        How the last integration of the calling thread was computed (in a thread that has made no call, the last
        one finished in any thread).

    Notes
    -----
    One object (and one model) may serve calls from several threads at once: each call keeps its own state, its
    layer hooks act only on its own forward passes, and what it learns for later calls (chunk sizes, see
    :class:`integrad.engine.RowShapes`) is taken out and put back under a lock.
    """

    last_report = LatestPerThread()

    def __init__(self, forward_func: Callable, multiply_by_inputs: bool = True):
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable (a model or a function); got {type(forward_func).__name__}")
        self.forward_func = forward_func
        self._multiply_by_inputs = arguments.check_bool("multiply_by_inputs", multiply_by_inputs)
        self.last_report = None
        self._row_shapes = RowShapes()

    @classmethod
    def get_name(cls) -> str:
        """The class name in words ("Layer Integrated Gradients"), as captum names its methods."""
        return spaced_name(cls)

    def attribute_future(self) -> None:
        """Not implemented, as in captum: :meth:`attribute` returns its result itself."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")

    @property
    def hooked_forward(self) -> Callable:
        """``forward_func`` for passes through layer hooks: the eager model behind a ``torch.compile`` wrapper
        (see :func:`integrad.probes.uncompiled`)."""
        return uncompiled(self.forward_func)

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def has_convergence_delta(self) -> bool:
        return True

    @staticmethod
    def _rule_settings(
        n_steps: Any, method: Any, internal_batch_size: Any, memory_budget: Any, tolerance: Any, device: torch.device
    ) -> dict:
        """Validated quadrature and chunking settings; called before the model first runs."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "integrated gradients need gradients, which torch.inference_mode() forbids; call attribute outside "
                "inference mode (torch.no_grad() is fine)"
            )
        method = arguments.check_method(method)
        n_steps = arguments.check_n_steps(n_steps, method, allow_auto=True)
        tolerance = arguments.check_tolerance(tolerance)
        chunking = Chunking.make(
            arguments.check_positive_int("internal_batch_size", internal_batch_size), memory_budget, device
        )
        return {
            "method": method,
            "n_steps": n_steps,
            "tolerance": tolerance,
            "chunking": chunking,
            # What chunks learn is kept per budget the caller chose; the default budget follows the free memory,
            # which moves from call to call, and is one key.
            "budget_key": None if memory_budget is None else chunking.budget,
        }

    def _input_path(self, inputs: Any, baselines: Any, additional_forward_args: Any, **rule: Any) -> InputPath:
        """Validated inputs, baselines, extra arguments and rule settings of a path in input space."""
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        settings = self._rule_settings(**rule, device=inputs_t[0].device)
        start = arguments.normalize_baselines(baselines, inputs_t, was_tuple)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, inputs_t[0].shape[0])
        return InputPath(inputs_t, was_tuple, start, tuple(x.detach() for x in inputs_t), args, per_example, settings)

    def _integrate(
        self, probe: Probe, path: Path, settings: dict, need_ends: bool, reduction: Callable | None = None
    ) -> PathIntegral:
        """Integrate ``probe`` along ``path`` with the call's rule and chunking; ``reduction`` (a fixed rule only)
        replaces the weighted sum, as :func:`integrad.engine.integrate` takes it. Settings that went through
        :meth:`_with_grad_kwargs` with ``create_graph=True`` keep the graph of every gradient."""
        if settings.get("grad_kwargs", {}).get("create_graph"):
            if reduction is not None:
                raise ValueError("grad_kwargs with create_graph=True integrates with a weighted sum of its own")
            result = self._integrate_keeping_graph(probe, path, settings, need_ends)
            self.last_report = result.report
            return result
        if settings["n_steps"] == "auto" and reduction is not None:
            raise ValueError("n_steps='auto' integrates with its own rule; this method needs an int n_steps")
        if settings["n_steps"] == "auto" and not path.smooth:
            raise ValueError(
                f"n_steps='auto' needs a smooth path, and {type(path).__name__} is not one (a path given as points, or "
                "one declared not smooth, has no integrand between its points to estimate an error from); give an int "
                "n_steps"
            )
        with self._chunking(path, settings) as chunking:
            if settings["n_steps"] == "auto":
                result = integrate_adaptive(probe, path, settings["tolerance"], chunking, need_ends)
            else:
                result = integrate(probe, path, settings["method"], settings["n_steps"], chunking, need_ends, reduction)
        self.last_report = result.report
        return result

    @contextlib.contextmanager
    def _chunking(self, path: Path, settings: dict) -> Iterator[Chunking]:
        """The call's chunking for rows along ``path``, sized by what earlier calls on rows of the same shapes,
        under the same budget, measured (a call under another budget runs chunks of other sizes: its timings would
        not compare); what this call measures is kept when it succeeds."""
        chunking = settings["chunking"].fresh()
        key = (tuple((tuple(x.shape[1:]), x.dtype) for x in path.like), path.device, settings["budget_key"])
        memory = self._row_shapes.checkout(key)
        memory.apply(chunking)
        yield chunking
        memory.learn(chunking, path.device)
        self._row_shapes.checkin(key, memory)

    @staticmethod
    def _with_grad_kwargs(settings: dict, grad_kwargs: Any, memory_budget: Any) -> dict:
        """``settings`` with captum's ``grad_kwargs`` (keyword arguments of ``torch.autograd.grad``) checked.

        ``create_graph=True`` keeps every chunk's graph, so that the attributions can be differentiated in turn (with
        respect to the parameters the path points flow through); the others do not change a result: gradients of
        values the output does not use are zeros whatever ``allow_unused`` and ``materialize_grads`` say, and
        ``retain_graph`` only keeps memory alive.
        """
        options = check_grad_kwargs(grad_kwargs)
        if options.get("create_graph"):
            if settings["n_steps"] == "auto":
                raise ValueError(
                    "grad_kwargs with create_graph=True needs an int n_steps: n_steps='auto' chooses its points from "
                    "gradients it then discards"
                )
            if memory_budget is not None:
                raise ValueError(
                    "grad_kwargs with create_graph=True keeps the graph of every chunk, which no memory_budget can "
                    "bound; leave memory_budget out (internal_batch_size still sets the rows per forward pass)"
                )
        return {**settings, "grad_kwargs": options}

    def _integrate_keeping_graph(self, probe: Probe, path: Path, settings: dict, need_ends: bool) -> PathIntegral:
        """The weighted sum of the rule's gradients with each chunk's graph kept (``create_graph=True``).

        Chunks have ``internal_batch_size`` rows (all rows by default, as the graphs of all are kept anyway). Every
        chunk gets points of its own, since a kept graph may hold them for the backward pass of the attributions.
        """
        own = path.rule()
        alphas, weights = own if own is not None else alphas_and_weights(settings["method"], settings["n_steps"])
        rows = rule_rows(path, alphas, weights)
        chunking = settings["chunking"].fresh()
        size = chunking.rows or rows.total
        dtype = accumulation_dtype(path)
        examples = moved(rows.examples, path.device)
        positions = moved(rows.alphas, path.device, path.compute)
        row_weights = moved(rows.weights[:, 0], path.device, dtype)
        sums = [torch.zeros((path.batch,) + tuple(x.shape[1:]), dtype=dtype, device=path.device) for x in path.like]
        values = []
        for first in range(0, rows.total, size):
            part = slice(first, min(first + size, rows.total))
            points, velocities = path.at(examples[part], positions[part])
            points = tuple(p.detach().requires_grad_() for p in points)
            with torch.enable_grad():
                # Copies go in, so that a model writing into its inputs in place leaves the leaves intact.
                out = probe(tuple(p.clone() for p in points), examples[part])
                grads = (
                    torch.autograd.grad(out.sum(), points, allow_unused=True, create_graph=True)
                    if out.requires_grad
                    else (None,) * len(points)
                )
            for i, g in enumerate(grads):
                if g is None:
                    continue
                g = g.to(dtype) if velocities is None else g.to(dtype) * velocities[i].to(dtype)
                weighted = g * row_weights[part].view((-1,) + (1,) * (g.dim() - 1))
                sums[i] = sums[i].index_add(0, examples[part], weighted)
            values.append(out.detach().to(torch.float64))
            chunking.record(part.stop - part.start)
        f_start = f_end = None
        if need_ends:
            every = torch.cat(values).cpu().view(len(alphas), path.batch)
            f_start, f_end = end_values(probe, path, chunking, alphas, every)
        report = IntegrationReport.of(chunking, torch.full((path.batch,), len(alphas), dtype=torch.long))
        return PathIntegral(sums, f_start, f_end, report, path)

    def _finish(self, result: PathIntegral, out_dtypes) -> tuple[Tensor, ...]:
        """Attributions from the integral, then the delta stored in the report.

        Along a path that factors its velocity out (the straight line) the integral is that of the gradient alone:
        it is multiplied by ``x − x′`` (in the gradients' dtype) unless the method returns the local attribution.
        """
        path = result.path
        if path.velocity_factored and self._multiply_by_inputs:
            attributions = tuple(
                moved(g * _velocity_in(path, i, g.dtype), g.device, dt)
                for i, (g, dt) in enumerate(zip(result.grads, out_dtypes))
            )
        else:
            attributions = tuple(moved(g, g.device, dt) for g, dt in zip(result.grads, out_dtypes))
        if result.f_end is not None:
            result.report.delta = convergence_delta(attributions, result.f_start, result.f_end)
        return attributions


#: Keywords of ``torch.autograd.grad`` that ``grad_kwargs`` may hold. The others (what is differentiated, with
#: respect to what, and how the rows' outputs are weighted) are the method's own.
GRAD_KEYWORDS = ("create_graph", "retain_graph", "allow_unused", "materialize_grads", "only_inputs")


def check_grad_kwargs(grad_kwargs: Any) -> dict:
    """``grad_kwargs`` as a dict: None, or a mapping from names in :data:`GRAD_KEYWORDS` to True or False
    (``retain_graph`` and ``allow_unused`` also None, their default)."""
    if grad_kwargs is None:
        return {}
    if not isinstance(grad_kwargs, Mapping):
        raise TypeError(
            f"grad_kwargs must be None or a dict of keyword arguments for torch.autograd.grad; got "
            f"{type(grad_kwargs).__name__}"
        )
    unknown = [k for k in grad_kwargs if k not in GRAD_KEYWORDS]
    if unknown:
        raise ValueError(
            f"grad_kwargs holds {unknown}; it may hold {', '.join(GRAD_KEYWORDS)} (the outputs, inputs, grad_outputs "
            "and batching of torch.autograd.grad are set by the method)"
        )
    options = {}
    for key, value in grad_kwargs.items():
        if value is None and key in ("retain_graph", "allow_unused"):
            options[key] = None
            continue
        options[key] = arguments.check_bool(f"grad_kwargs[{key!r}]", value)
    return options


def spaced_name(cls: type) -> str:
    """``"LayerIntegratedGradients"`` as ``"Layer Integrated Gradients"``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", cls.__name__)


def _velocity_in(path, i: int, dtype: torch.dtype) -> Tensor:
    """``x − x′`` of path tensor ``i`` in ``dtype``: the path's own where it is in that dtype already, else formed in
    ``dtype`` (more accurate for half-precision inputs than the difference rounded to their dtype)."""
    velocity = path.velocity[i]
    if velocity.dtype == dtype:
        return velocity
    return path.end[i].to(dtype) - path.start[i].to(dtype)


@dataclass
class InputPath:
    """A straight path from the baselines (``start``) to the inputs (``end``), with what the model needs besides."""

    inputs: tuple[Tensor, ...]
    was_tuple: bool
    start: tuple[Tensor, ...]
    end: tuple[Tensor, ...]
    args: tuple
    per_example: tuple[bool, ...]
    settings: dict

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]

    @property
    def dtypes(self) -> list[torch.dtype]:
        return [x.dtype for x in self.inputs]


def convergence_delta(attributions: tuple[Tensor, ...], f_start: Tensor, f_end: Tensor) -> Tensor:
    """``Σ attributions − (F(x) − F(x′))`` per example, summed in float64; float64 if any attribution is, else
    float32, on the attributions' device."""
    total = sum(a.detach().to(torch.float64).reshape(a.shape[0], -1).sum(1).cpu() for a in attributions)
    dtype = torch.float64 if any(a.dtype == torch.float64 for a in attributions) else torch.float32
    return (total - (f_end - f_start)).to(device=attributions[0].device, dtype=dtype)


class ConvergenceDelta:
    """``compute_convergence_delta`` as captum has it: ``Σ attributions − (F(end_point) − F(start_point))``."""

    forward_func: Callable
    #: The end points may be token ids (the attributions are a layer's, not the inputs').
    _ENDS_MAY_BE_IDS = False

    @keeps_model_state
    def compute_convergence_delta(
        self,
        attributions: Any,
        start_point: Any,
        end_point: Any,
        target: Any = None,
        additional_forward_args: Any = None,
    ) -> Tensor:
        """``Σ attributions − (F(end_point) − F(start_point))`` per example (completeness error).

        ``start_point`` accepts every form ``baselines`` accepts. For a method on the inputs, ``attributions`` has
        the structure and shapes of ``end_point``; for a layer method it is one layer's attributions (a tensor, or a
        tuple for a layer whose value is one), and the end points are model inputs (token ids included).
        """
        attrs = self._delta_attributions(attributions, end_point)
        return model_convergence_delta(
            self.forward_func,
            attrs,
            start_point,
            end_point,
            target,
            additional_forward_args,
            need_grad=not self._ENDS_MAY_BE_IDS,
        )

    def _delta_attributions(self, attributions: Any, end_point: Any) -> tuple[Tensor, ...]:
        ends, _ = arguments.normalize_inputs(end_point, name="end_point")
        attrs, _ = arguments.normalize_inputs(attributions, name="attributions", need_grad=False)
        if len(attrs) != len(ends) or any(a.shape != e.shape for a, e in zip(attrs, ends)):
            raise ValueError("attributions must have the same structure and shapes as end_point")
        return attrs


#: ``compute_convergence_delta`` of a method that attributes to its inputs.
InputConvergenceDelta = ConvergenceDelta


class LayerConvergenceDelta(ConvergenceDelta):
    """``compute_convergence_delta`` of a method that attributes to a layer: the attributions are the layer's, the
    end points model inputs."""

    _ENDS_MAY_BE_IDS = True

    def _delta_attributions(self, attributions: Any, end_point: Any) -> tuple[Tensor, ...]:
        if isinstance(attributions, list):
            raise TypeError(
                "attributions must be one layer's attributions (a tensor or a tuple of tensors); for a list of layers "
                "pass one element of the list: each layer's attributions add up to F(end_point) − F(start_point) alone"
            )
        return arguments.normalize_inputs(attributions, name="attributions", need_grad=False)[0]


def model_convergence_delta(
    forward_func: Callable,
    attributions: tuple[Tensor, ...],
    start_point: Any,
    end_point: Any,
    target: Any,
    additional_forward_args: Any,
    need_grad: bool = True,
) -> Tensor:
    """``Σ attributions − (F(end_point) − F(start_point))`` per example, with the model run once on both ends
    together (``need_grad=False`` lets the ends be token ids)."""
    ends, was_tuple = arguments.normalize_inputs(end_point, name="end_point", need_grad=need_grad)
    batch = ends[0].shape[0]
    for i, a in enumerate(attributions):
        if a.dim() == 0 or a.shape[0] != batch:
            raise ValueError(
                f"attributions must have one row per example of end_point ({batch}); attributions[{i}] has shape "
                f"{tuple(a.shape)}"
            )
    starts = arguments.normalize_baselines(start_point, ends, was_tuple)
    target_t = arguments.normalize_target(target, batch, ends[0].device)
    args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
    probe = output_probe(forward_func, lambda points, examples: points, target_t, args, per_example)
    both = tuple(torch.cat([e.detach(), s]) for s, e in zip(starts, ends))
    rows = torch.arange(batch).repeat(2)

    def evaluate(part: slice) -> Tensor:
        return probe(tuple(t[part] for t in both), rows[part]).to(torch.float64)

    with torch.no_grad():  # one forward pass for both ends, halved on an allocation failure
        values = torch.cat(run_chunked(evaluate, 2 * batch, Chunking(rows=2 * batch))).cpu()
    return convergence_delta(attributions, values[batch:], values[:batch])


def output_probe(
    forward_func: Callable,
    inputs_for_rows: Callable[[tuple[Tensor, ...], Tensor], tuple],
    target: Tensor | None,
    args: tuple,
    per_example: tuple[bool, ...],
) -> Probe:
    """Probe of the model output at the target: ``F(*inputs_for_rows(points, examples), *extra)[target]``."""
    select = TargetProbe(target)

    def probe(points: tuple[Tensor, ...], examples: Tensor) -> Tensor:
        extra = arguments.select_rows(args, per_example, examples)
        return select(forward_func(*inputs_for_rows(points, examples), *extra), examples)

    return probe


def restore_structure(values: tuple[Tensor, ...], was_tuple: bool):
    return values if was_tuple else values[0]
