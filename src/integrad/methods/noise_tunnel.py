"""NoiseTunnel: SmoothGrad, SmoothGrad² and VarGrad over any method of the family."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import arguments
from .base import PathAttribution, spaced_name

NT_TYPES = arguments.NT_TYPES


class NoiseTunnel:
    r"""Average an attribution method over Gaussian-noised copies of the inputs.

    For ``S = nt_samples`` copies ``x + ε_s``, ``ε_s ~ N(0, σ²)``: ``smoothgrad`` returns ``mean_s A(x + ε_s)``,
    ``smoothgrad_sq`` returns ``mean_s A(x + ε_s)²`` and ``vargrad`` returns ``Var_s A(x + ε_s)``.

    Parameters
    ----------
    attribution_method : IntegratedGradients, LayerIntegratedGradients or NeuronIntegratedGradients

    Notes
    -----
    Randomness is drawn as captum's ``NoiseTunnel`` draws it, so that the same seeds give the same result. Each call
    of the wrapped method (``nt_samples_batch_size`` copies of every example, then the rest) stacks its copies
    example-major (row ``i·s + k`` is copy ``k`` of example ``i``) and draws, for each input in order,
    ``σ · torch.randn`` of the stacked shape in the default dtype from torch's global generator. With
    ``draw_baseline_from_distrib``, the baseline rows come from ``numpy.random.choice`` on numpy's global generator.
    Two differences from captum, both in the drawing of baselines: rows are drawn anew for every call of the wrapped
    method (captum reuses the first call's rows for every full call), and the baselines of a tuple with the same
    number of rows share the drawn rows, so that they stay paired (captum draws each independently). The convergence
    deltas come back in the stacking order, call after call.

    torch's and numpy's global generators are shared by every thread: calls made from several threads at once
    interleave their draws, so that which noise a call gets depends on the timing. Give each call a
    ``generator`` of its own to make its result reproducible there; the object itself keeps no state between calls.

    References
    ----------
    Smilkov et al. SmoothGrad: removing noise by adding noise. 2017. https://arxiv.org/abs/1706.03825
    Adebayo et al. Local Explanation Methods for Deep Neural Networks Lack Sensitivity to Parameter Values. 2018.
    """

    def __init__(self, attribution_method: PathAttribution):
        if not isinstance(attribution_method, PathAttribution):
            raise TypeError(
                "attribution_method must be an integrad IntegratedGradients, LayerIntegratedGradients or "
                f"NeuronIntegratedGradients; got {type(attribution_method).__name__}"
            )
        self.attribution_method = attribution_method
        self.is_delta_supported = attribution_method.has_convergence_delta()

    @property
    def multiplies_by_inputs(self) -> bool:
        return self.attribution_method.multiplies_by_inputs

    def has_convergence_delta(self) -> bool:
        return self.is_delta_supported

    @classmethod
    def get_name(cls) -> str:
        """The class name in words ("Noise Tunnel"), as captum names its methods."""
        return spaced_name(cls)

    def attribute_future(self) -> None:
        """Not implemented, as in captum: :meth:`attribute` returns its result itself."""
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        nt_type: str = "smoothgrad",
        nt_samples: int = 5,
        nt_samples_batch_size: int | None = None,
        stdevs: float | tuple[float, ...] = 1.0,
        draw_baseline_from_distrib: bool = False,
        *,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ):
        """Noise-averaged attributions.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Floating-point inputs (noise is added to them).
        nt_type : str
            ``smoothgrad``, ``smoothgrad_sq`` or ``vargrad``.
        nt_samples : int
            Noisy copies per example.
        nt_samples_batch_size : int, optional
            Copies per call of the wrapped method (all at once by default).
        stdevs : float or tuple of float
            Noise standard deviation, one for all inputs or one per input.
        draw_baseline_from_distrib : bool
            Draw each copy's baseline at random from the rows of ``baselines`` (a distribution of baselines).
        generator : torch.Generator, optional
            Draw the noise (and the baselines' rows) from this generator instead of the global ones: ``σ ·
            torch.randn`` with it, on its device, then moved to the inputs'; baseline rows by ``torch.randint`` with
            it. With the generator's seed the noise is the one the global torch generator gives after
            ``torch.manual_seed`` of that seed (on the CPU).
        **kwargs
            Passed to the wrapped method's ``attribute`` (``baselines``, ``target``, ``n_steps``, ...).
            ``return_convergence_delta=True`` returns the deltas of all ``nt_samples × batch`` copies as well.
        """
        arguments.check_nt_type(nt_type)
        nt_samples = arguments.check_positive_int("nt_samples", nt_samples, allow_none=False)
        per_call = arguments.check_positive_int("nt_samples_batch_size", nt_samples_batch_size) or nt_samples
        arguments.check_bool("draw_baseline_from_distrib", draw_baseline_from_distrib)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        sigmas = arguments.check_stdevs(stdevs, len(inputs_t))
        batch = inputs_t[0].shape[0]
        want_delta = kwargs.get("return_convergence_delta", False)
        if want_delta and not self.is_delta_supported:
            raise ValueError(
                f"{type(self.attribution_method).__name__} has no convergence delta; "
                "return_convergence_delta must be False"
            )
        baselines = kwargs.pop("baselines", None)
        target = kwargs.pop("target", None)
        extra = kwargs.pop("additional_forward_args", None)
        takes_target = "target" in _accepted(self.attribution_method)
        if target is not None and not takes_target:
            raise TypeError(
                f"target is not an argument of {type(self.attribution_method).__name__}.attribute; it attributes the "
                "selected neuron, so leave target out"
            )
        target_t = arguments.normalize_target(target, batch, inputs_t[0].device)
        args, per_example = arguments.normalize_additional_args(extra, batch)

        moments = _Moments()
        deltas = []
        for s in _calls(nt_samples, per_call):
            # Copies are stacked example-major: row i·s + k is copy k of example i.
            rows = copy_examples(batch, s)
            noisy = tuple(_noisy(x, sigma, s, generator) for x, sigma in zip(inputs_t, sigmas))
            call = dict(kwargs)
            call["baselines"] = _baselines_for(baselines, inputs_t, s, draw_baseline_from_distrib, generator)
            if takes_target:
                call["target"] = None if target_t is None else target_t.index_select(0, rows.to(target_t.device))
            if args:
                call["additional_forward_args"] = arguments.select_rows(args, per_example, rows)
            out = self.attribution_method.attribute(noisy if was_tuple else noisy[0], **call)
            if want_delta:
                out, delta = out
                deltas.append(delta)
            leaves, rebuild = _flatten(out)
            moments.add([a.reshape((batch, s) + a.shape[1:]).to(torch.float64) for a in leaves])
        result = rebuild([r.to(a.dtype) for r, a in zip(moments.result(nt_type), leaves)])
        if want_delta:
            return result, torch.cat(deltas)
        return result


class _Moments:
    """Mean and sum of squared deviations of the copies' attributions, merged call by call in float64 (Chan et al.):
    stable where E[A²] − E[A]² would cancel, and exactly zero for identical samples."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, grouped: list[Tensor]) -> None:
        """Merge one call's copies: per leaf ``(batch, copies, ...)``."""
        s = grouped[0].shape[1]
        part_mean = [g.mean(1) for g in grouped]
        part_m2 = [((g - pm.unsqueeze(1)) ** 2).sum(1) for g, pm in zip(grouped, part_mean)]
        if self.mean is None:
            self.mean, self.m2 = part_mean, part_m2
        else:
            total = self.count + s
            shift = [pm - m for pm, m in zip(part_mean, self.mean)]
            self.mean = [m + d * (s / total) for m, d in zip(self.mean, shift)]
            self.m2 = [a + b + d * d * (self.count * s / total) for a, b, d in zip(self.m2, part_m2, shift)]
        self.count += s

    def result(self, nt_type: str) -> list[Tensor]:
        """The mean (smoothgrad), the mean square (smoothgrad_sq) or the variance (vargrad)."""
        if nt_type == "smoothgrad":
            return self.mean
        if nt_type == "smoothgrad_sq":
            return [v / self.count + m * m for v, m in zip(self.m2, self.mean)]
        return [v / self.count for v in self.m2]


def _accepted(method: PathAttribution) -> set[str]:
    return set(inspect.signature(method.attribute).parameters)


def _calls(samples: int, per_call: int) -> list[int]:
    """Copies per call of the wrapped method: as many calls of ``per_call`` as fit, then the rest."""
    return [per_call] * (samples // per_call) + ([samples % per_call] if samples % per_call else [])


def copy_examples(batch: int, nt_samples: int, nt_samples_batch_size: int | None = None) -> Tensor:
    """The example of each noisy copy, in the order :meth:`NoiseTunnel.attribute` returns their deltas."""
    return torch.cat(
        [torch.arange(batch).repeat_interleave(s) for s in _calls(nt_samples, nt_samples_batch_size or nt_samples)]
    )


def _noisy(x: Tensor, sigma: float, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """``samples`` copies of each example (example-major) plus ``N(0, σ²)`` noise drawn in the default dtype from
    ``generator`` (on its device) or torch's global generator (on the input's), in the input's dtype."""
    shape = (samples * x.shape[0],) + x.shape[1:]
    if generator is None:
        noise = sigma * torch.randn(shape, dtype=torch.get_default_dtype(), device=x.device)
    else:
        drawn = torch.randn(shape, dtype=torch.get_default_dtype(), device=generator.device, generator=generator)
        noise = sigma * drawn.to(x.device)
    noisy = x.detach().repeat_interleave(samples, dim=0) + noise
    return noisy if noisy.dtype == x.dtype else noisy.to(x.dtype)


def _baselines_for(baselines: Any, inputs_t, samples: int, draw: bool, generator: torch.Generator | None = None):
    """Baselines for ``samples`` copies of each example (example-major): repeated per copy, or drawn at random from
    the rows of a distribution of baselines.

    A draw takes ``numpy.random.choice(rows, samples × batch)`` from numpy's global generator, once per call of the
    wrapped method (``torch.randint`` with ``generator`` when one is given), and uses the same drawn rows for every
    baseline tensor with that many rows, so that the baselines of a tuple stay paired.
    """
    if baselines is None:
        return None
    items = baselines if isinstance(baselines, tuple) else (baselines,)
    batch = inputs_t[0].shape[0]
    picks: dict[int, Tensor] = {}
    out = []
    for b in items:
        if not isinstance(b, Tensor) or b.dim() == 0:
            out.append(b)
        elif draw:
            if b.shape[0] not in picks:
                picks[b.shape[0]] = _draw_rows(b.shape[0], samples * batch, generator).to(b.device, torch.long)
            out.append(b.index_select(0, picks[b.shape[0]]))
        elif b.shape[0] == batch and batch > 1:
            out.append(b.repeat_interleave(samples, dim=0))
        else:
            out.append(b)
    return tuple(out) if isinstance(baselines, tuple) else out[0]


def _draw_rows(rows: int, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` row indices drawn uniformly from ``range(rows)``, with replacement."""
    if generator is None:
        return torch.from_numpy(np.random.choice(rows, count))
    return torch.randint(rows, (count,), generator=generator, device=generator.device)


def _flatten(out: Any):
    """Leaves of a result that may be a tensor, a tuple of tensors, or a list of those; with a rebuild function."""
    if isinstance(out, Tensor):
        return [out], lambda leaves: leaves[0]
    if isinstance(out, tuple):
        return list(out), lambda leaves: tuple(leaves)
    if isinstance(out, list):
        parts = [_flatten(o) for o in out]
        sizes = [len(p[0]) for p in parts]

        def rebuild(leaves):
            res, pos = [], 0
            for (_, fn), n in zip(parts, sizes):
                res.append(fn(leaves[pos : pos + n]))
                pos += n
            return res

        return [leaf for p in parts for leaf in p[0]], rebuild
    raise TypeError(f"unexpected attribution result of type {type(out).__name__}")
