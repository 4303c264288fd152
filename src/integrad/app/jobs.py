"""Attributing whole data sets: sharded, resumable and distributed.

:func:`attribute_dataset` writes one ``shard-NNNNN.safetensors`` per batch
(``attributions``, ``deltas``, ``indices``, ``targets``, ``steps``) and a
``manifest.json`` with the parameters of the run, a fingerprint of the data and
the progress. Each file is written to a temporary file in the same folder,
flushed to disk and renamed over its final name, so a run killed at any moment
leaves only whole shards; running the same command again computes the missing
batches only. Baselines are fixed or drawn from a generator seeded by
``(seed, batch index)``, and so are the draws of expected gradients and
GradientSHAP, so a resumed run gives the same numbers as one that was never
interrupted.

The method family (:data:`FAMILIES`: integrated gradients, blur IG, guided IG,
expected gradients, GradientSHAP, XRAI) and its options are chosen and checked
together by :func:`choose_method`; :class:`Attributor` runs every batch through
the family's explainer of :mod:`integrad.explainers`.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) batch ``b`` goes to rank
``b % world_size``; rank 0 owns the manifest. Shards are per batch, not per
rank, so any world size can finish what another left.

:func:`load_attributions` reads a finished folder back in data-set order.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import importlib.util
import inspect
import json
import math
import operator
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import arguments
from ..arguments import model_output
from ..engine import parse_bytes
from ..explainers import XRAI, BlurIntegratedGradients, ExpectedGradients, GradientShap, GuidedIntegratedGradients
from ..explainers import IntegratedGradients as IntegratedGradientsExplainer
from ..explainers.baselines import BASELINES, get_baseline_fn
from ..explainers.core import CoreExplainer
from .files import save_tensors, write_json
from .io import DataSource, InputError, load_model, model_fingerprint, open_data, resolve_layer
from .progress import progress_bar

__all__ = [
    "AttributionSet",
    "Attributor",
    "BASELINE_NAMES",
    "FAMILIES",
    "MethodChoice",
    "background_indices",
    "choose_method",
    "seeded_random",
    "attribute_dataset",
    "load_attributions",
    "summarize",
    "make_baselines",
    "check_seed",
]

MANIFEST = "manifest.json"
FORMAT = "integrad-attributions/1"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
BASELINE_NAMES = tuple(BASELINES)
#: Baselines built from statistics of the data; the command line takes them over all the examples (see
#: :meth:`Attributor.fit_baseline`), except for 4-D images, whose statistics are each image's own.
DATA_BASELINES = ("mean", "invert")
#: The largest ``--seed``: batch ``b`` is seeded with ``seed * 1_000_003 + b``, which must fit a 64-bit generator seed.
SEED_MAX = 2**32 - 1
# Errors of the data or the arguments that can surface while a batch is attributed (beyond the first example).
BATCH_ERRORS = (ValueError, TypeError, IndexError)


def checked(parameter: str, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, with the ValueError or TypeError of a value it refuses as an :class:`InputError` naming
    ``parameter``: a job's options go through the library's own checks before anything runs."""
    try:
        return check(*args)
    except (ValueError, TypeError) as exc:
        raise InputError(parameter, str(exc)) from exc


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("integrad")
    except Exception:
        return "unknown"


# --------------------------------------------------------------------------- baselines


def check_seed(seed: Any, parameter: str = "seed") -> int:
    """``seed`` as an int, or :class:`InputError` unless it is an integer from 0 to :data:`SEED_MAX`."""
    try:
        value = None if isinstance(seed, bool) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not 0 <= value <= SEED_MAX:
        raise InputError(parameter, f"expected an integer from 0 to {SEED_MAX}, got {seed!r}")
    return value


def make_baselines(
    name: str,
    x: torch.Tensor,
    seed: int = 0,
    pad_token_id: int | None = None,
    special_ids: Sequence[int] = (),
) -> torch.Tensor:
    """Baselines for a batch ``x``, by the names of :data:`integrad.explainers.baselines.BASELINES`.

    Parameters
    ----------
    name : str
        ``zeros``, ``mean``, ``invert``, ``gaussian_blur``, ``uniform``,
        ``gaussian`` or ``token``. Integer token ids always get ``token``: the
        pad id (``pad_token_id``, default 0) everywhere but at the special
        tokens in ``special_ids``.
    x : torch.Tensor
        A batch of inputs.
    seed : int
        Seed of ``uniform`` and ``gaussian``; the same seed gives the same baselines.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Notes
    -----
    ``mean`` and ``invert`` are computed from ``x`` alone: for inputs other
    than 4-D images, from the examples of this batch (a batch of one example
    is its own baseline). :class:`Attributor` takes them over all the data
    instead (:meth:`Attributor.fit_baseline`).
    """
    if not x.is_floating_point():
        pad = 0 if pad_token_id is None else int(pad_token_id)
        return get_baseline_fn("token", token_id=pad, keep_ids=tuple(int(i) for i in special_ids))(x)
    if name == "token":
        raise InputError("baseline", "'token' is for integer token ids; use zeros, mean, invert, ...")
    if name not in BASELINE_NAMES:
        raise InputError("baseline", f"unknown baseline {name!r}; choose from {', '.join(BASELINE_NAMES)}")
    params = {}
    if name in ("uniform", "gaussian"):
        if not -(2**63) <= int(seed) < 2**64:
            raise InputError("seed", f"{seed} does not fit a 64-bit generator seed; use 0 to {SEED_MAX}")
        params = {"seed": int(seed)}
    try:
        return get_baseline_fn(name, **params)(x)
    except (ValueError, TypeError) as exc:
        raise InputError("baseline", f"{name!r} does not fit inputs of shape {tuple(x.shape)}: {exc}") from exc


# --------------------------------------------------------------------------- method families

#: The method families of the command line, each computed by its explainer in :mod:`integrad.explainers`.
FAMILIES = ("ig", "blur", "guided", "expected", "gradientshap", "xrai")
#: What each family is, for messages and help.
FAMILY_TITLES = {
    "ig": "integrated gradients",
    "blur": "blur integrated gradients",
    "guided": "guided integrated gradients",
    "expected": "expected gradients",
    "gradientshap": "GradientSHAP",
    "xrai": "XRAI",
}
#: Families IDGI's reduction applies to.
IDGI_FAMILIES = ("ig", "blur", "guided")
#: Families that attribute (N, C, H, W) images only.
IMAGE_FAMILIES = ("blur", "xrai")
#: Families whose integral follows a quadrature rule (expected gradients only with ``n_steps``; blur IG sums over
#: its blur levels unless a rule is given).
RULE_FAMILIES = ("ig", "blur", "expected", "xrai")
#: Families that start from a baseline (XRAI: by default each image's own minimum and maximum).
BASELINE_FAMILIES = ("ig", "guided", "xrai")
#: Families that draw their baselines from a background of examples.
BACKGROUND_FAMILIES = ("expected", "gradientshap")
#: The options of each family beyond the shared ones, and the explainer whose defaults they take.
FAMILY_OPTIONS = {
    "blur": ("max_sigma",),
    "guided": ("fraction", "max_dist"),
    "expected": ("n_samples",),
    "gradientshap": ("n_samples", "stdevs"),
}
_OPTION_DEFAULTS_FROM = {
    "blur": BlurIntegratedGradients,
    "guided": GuidedIntegratedGradients,
    "expected": ExpectedGradients,
    "gradientshap": GradientShap,
}
#: Path points per example where none are given (expected gradients sample positions instead).
DEFAULT_N_STEPS = 50


_OPTION_CHECKS: dict[str, Callable[[Any], Any]] = {
    "max_sigma": lambda value: arguments.check_positive("max_sigma", value),
    "fraction": arguments.check_fraction,
    "max_dist": arguments.check_max_dist,
    "n_samples": lambda value: arguments.check_positive_int("n_samples", value, allow_none=False),
    "stdevs": lambda value: arguments.check_non_negative("stdevs", value),
}


@dataclass(frozen=True)
class MethodChoice:
    """A method family with every option it takes, checked and with the defaults filled in.

    Attributes
    ----------
    family : str
        One of :data:`FAMILIES`.
    rule : str or None
        The quadrature rule; None where the family has none (guided IG, GradientSHAP, IDGI, sampled expected
        gradients) or sums by its own (blur IG without a rule).
    idgi : bool
        IDGI's important-direction sum over the path's points.
    n_steps : int, "auto" or None
        Path points per example; None for the families that draw their points.
    baseline : str or None
        A name of :data:`BASELINE_NAMES`; None for the families without one, and for XRAI's own.
    options : tuple of (name, value)
        The family's own options (:data:`FAMILY_OPTIONS`).
    background : int or None
        How many examples make the background of expected gradients and GradientSHAP.
    """

    family: str = "ig"
    rule: str | None = "gausslegendre"
    idgi: bool = False
    n_steps: int | str | None = DEFAULT_N_STEPS
    baseline: str | None = "zeros"
    options: tuple[tuple[str, Any], ...] = ()
    background: int | None = None

    def parameters(self) -> dict[str, Any]:
        """What a run records about the method: the family and the options that apply to it."""
        recorded: dict[str, Any] = {"method": self.family}
        if self.family in RULE_FAMILIES:
            recorded["rule"] = self.rule
        if self.family in IDGI_FAMILIES:
            recorded["idgi"] = self.idgi
        recorded["n_steps"] = self.n_steps
        recorded["baseline"] = self.baseline
        recorded.update(self.options)
        if self.family in BACKGROUND_FAMILIES:
            recorded["background"] = self.background
        return recorded

    def describe(self) -> str:
        """One line, e.g. ``blur (max_sigma 10, idgi)``."""
        details = [f"{k} {v}" for k, v in self.options]
        if self.rule is not None:
            details.insert(0, f"rule {self.rule}")
        if self.idgi:
            details.append("idgi")
        if self.background is not None:
            details.append(f"background {self.background}")
        return self.family + (f" ({', '.join(details)})" if details else "")


def choose_method(
    method: str = "ig",
    *,
    rule: str | None = None,
    idgi: bool = False,
    n_steps: Any = None,
    baseline: str | None = None,
    layer: str | None = None,
    background: int | None = None,
    **options: Any,
) -> MethodChoice:
    """Check a method family and its options together, filling in each family's defaults.

    Parameters
    ----------
    method : str
        A family of :data:`FAMILIES`, or a quadrature rule of :data:`integrad.arguments.METHOD_NAMES`, which means
        ``ig`` with that rule (as the rule was once given).
    rule, idgi, n_steps, baseline, layer, background
        None (or False) where not given; each is refused for a family it does not apply to.
    **options
        ``max_sigma``, ``fraction``, ``max_dist``, ``n_samples``, ``stdevs``: None where not given.

    Returns
    -------
    MethodChoice

    Raises
    ------
    InputError
        Naming the parameter that does not fit, or whose value is unusable.
    """
    family, rule = _family_and_rule(method, rule)
    idgi = checked("idgi", arguments.check_bool, "idgi", idgi)
    title = FAMILY_TITLES[family]
    if idgi and family not in IDGI_FAMILIES:
        raise InputError("idgi", f"IDGI applies to {', '.join(IDGI_FAMILIES)}, not to {family} ({title})")
    if layer is not None and family != "ig":
        raise InputError("layer", f"{title} attributes to the inputs; layer attribution is for ig")
    if layer is not None and idgi:
        raise InputError("layer", "IDGI attributes to the inputs, not to a layer; leave out the layer or IDGI")
    if family == "xrai" and importlib.util.find_spec("skimage") is None:
        raise InputError("method", "xrai needs scikit-image for its segments: pip install 'integrad[xrai]'")
    n_steps = _family_n_steps(family, n_steps, rule, idgi)
    rule = _family_rule(family, rule, idgi, n_steps)
    return MethodChoice(
        family=family,
        rule=rule,
        idgi=idgi,
        n_steps=n_steps,
        baseline=_family_baseline(family, baseline),
        options=_family_options(family, options),
        background=_family_background(family, background),
    )


def _family_and_rule(method: Any, rule: Any) -> tuple[str, str | None]:
    """The family, and the rule given: a rule given as the method is ig's."""
    if rule is not None:
        rule = checked("rule", arguments.check_method, rule)
    if isinstance(method, str) and method in arguments.METHOD_NAMES:
        if rule is not None and rule != method:
            raise InputError(
                "rule", f"{rule!r} differs from the rule {method!r} given as the method; give the rule once"
            )
        return "ig", method
    if not isinstance(method, str) or method not in FAMILIES:
        raise InputError(
            "method",
            f"unknown method {method!r}; choose a family ({', '.join(FAMILIES)}) or a quadrature rule of ig "
            f"({', '.join(arguments.METHOD_NAMES)})",
        )
    return method, rule


def _family_n_steps(family: str, n_steps: Any, rule: str | None, idgi: bool) -> int | str | None:
    if family == "gradientshap":
        if n_steps is not None:
            raise InputError("n_steps", "GradientSHAP draws one point per sample: the number of samples sets how many")
        return None
    if n_steps is None:
        return None if family == "expected" else DEFAULT_N_STEPS
    allow_auto = family in ("ig", "blur", "expected") and not idgi
    if n_steps == "auto" and not allow_auto:
        raise InputError(
            "n_steps",
            f"'auto' applies to ig, blur and expected without IDGI; {FAMILY_TITLES[family]}"
            f"{' with IDGI' if idgi else ''} needs a number of steps",
        )
    n_steps = checked("n_steps", arguments.check_n_steps, n_steps, rule or "gausslegendre", allow_auto)
    return n_steps


def _family_rule(family: str, rule: str | None, idgi: bool, n_steps: Any) -> str | None:
    title = FAMILY_TITLES[family]
    if rule is not None:
        if family not in RULE_FAMILIES:
            raise InputError("rule", f"{title} follows no quadrature rule")
        if idgi:
            raise InputError("rule", "IDGI sums over the points of a fixed grid; no quadrature rule applies")
        if family == "expected" and n_steps is None:
            raise InputError(
                "rule", "expected gradients draw their positions unless n_steps is given; a rule needs n_steps"
            )
        return rule
    if idgi or family in ("guided", "gradientshap", "blur") or (family == "expected" and n_steps is None):
        return None  # blur IG's own sum over its blur levels, or no rule at all
    return "gausslegendre"


def _family_baseline(family: str, baseline: str | None) -> str | None:
    if baseline is None:
        return "zeros" if family in ("ig", "guided") else None
    if family not in BASELINE_FAMILIES:
        start = "the blurred inputs" if family == "blur" else "the background (its rows are the baselines)"
        raise InputError("baseline", f"{FAMILY_TITLES[family]} starts from {start}; it takes no baseline")
    if baseline not in BASELINE_NAMES:
        raise InputError("baseline", f"unknown baseline {baseline!r}; choose from {', '.join(BASELINE_NAMES)}")
    return baseline


def _family_options(family: str, options: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    unknown = sorted(set(options) - set(_OPTION_CHECKS))
    if unknown:
        raise TypeError(f"unknown method option(s) {unknown}; accepted: {sorted(_OPTION_CHECKS)}")
    own = FAMILY_OPTIONS.get(family, ())
    for name, value in options.items():
        if value is not None and name not in own:
            takers = [f for f, names in FAMILY_OPTIONS.items() if name in names]
            raise InputError(name, f"applies to {' and '.join(takers)}, not to {family} ({FAMILY_TITLES[family]})")
    defaults = inspect.signature(_OPTION_DEFAULTS_FROM[family].__init__).parameters if own else {}
    return tuple(
        (
            name,
            checked(name, _OPTION_CHECKS[name], defaults[name].default if options.get(name) is None else options[name]),
        )
        for name in own
    )


def _family_background(family: str, background: Any) -> int | None:
    if family not in BACKGROUND_FAMILIES:
        if background is not None:
            raise InputError("background", f"applies to {' and '.join(BACKGROUND_FAMILIES)}, not to {family}")
        return None
    if background is None:
        raise InputError(
            "background",
            f"{FAMILY_TITLES[family]} needs a background: give how many examples to draw from the data as its "
            "baselines",
        )
    return checked("background", arguments.check_positive_int, "background", background, False)


def background_indices(count: int, n: int, seed: int, parameter: str = "data") -> list[int]:
    """``count`` of ``n`` examples drawn without replacement by a generator seeded with ``seed``, in data order."""
    if count > n:
        raise InputError("background", f"{count} examples asked for, but the {parameter} hold {n}; give at most {n}")
    generator = torch.Generator().manual_seed(int(seed))
    return sorted(torch.randperm(n, generator=generator)[:count].tolist())


@contextlib.contextmanager
def seeded_random(seed: int):
    """torch's and numpy's global generators seeded with ``seed`` while the block runs, and put back after it.

    GradientSHAP draws from both, as captum does; a 64-bit seed reaches numpy as its two 32-bit halves.
    """
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            np.random.seed([int(seed) & 0xFFFFFFFF, int(seed) >> 32])
            yield
    finally:
        np.random.set_state(state)


# --------------------------------------------------------------------------- attribution of one batch


def _unwrap(out: Any) -> torch.Tensor:
    out = model_output(out)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    raise TypeError(f"the model returned {type(out).__name__}; a tensor (or an output with .logits) is needed")


class _Forward(nn.Module):
    """The model with its output reduced to a tensor, so that hooks and the core see a plain function."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args):
        return _unwrap(self.model(*args))


@contextlib.contextmanager
def _hooked(layer: nn.Module | None, name: str | None, hook):
    """``hook`` on ``layer``'s forward while the block runs (nothing without a layer)."""
    if layer is None:
        yield
        return
    try:
        handle = layer.register_forward_hook(hook)
    except Exception as exc:
        raise InputError(
            "layer",
            f"cannot hook layer {name!r} of this model ({exc}); layer attribution needs a 'module:factory' model",
        ) from exc
    try:
        yield
    finally:
        handle.remove()


def _first_embedding(model: nn.Module) -> str | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            return name
    return None


@dataclass
class BatchResult:
    attributions: torch.Tensor
    deltas: torch.Tensor
    steps: torch.Tensor
    targets: torch.Tensor | None


class Attributor:
    """Attribution for the command line: one model, one method family, one set of options.

    Parameters
    ----------
    model : torch.nn.Module
    method : str
        A family of :data:`FAMILIES` (default ``ig``, integrated gradients), or a quadrature rule, which means
        ``ig`` with that rule (see :func:`choose_method`).
    n_steps : int, "auto" or None
        Path points per example; None: the family's default.
    baseline : str or None
        A name from :data:`BASELINE_NAMES` for the families with a baseline; None: the family's default.
        ``mean`` and ``invert`` use the statistics recorded by :meth:`fit_baseline` (all the data), if it was
        called, and those of each batch otherwise.
    layer : str, optional
        Dotted submodule name for layer integrated gradients.
    target : "predicted", "label" or int
    pad_token_id, special_ids
        For token inputs (the ``token`` baseline).
    memory_budget : int, optional
        Bytes, passed to the core.
    tolerance : float
        Relative error allowed with ``n_steps="auto"``.
    rule, idgi, background, max_sigma, fraction, max_dist, n_samples, stdevs
        The family's options (see :func:`choose_method`); ``background`` is a number of examples, given with
        :meth:`use_background`.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str = "ig",
        n_steps: Any = None,
        baseline: str | None = None,
        layer: str | None = None,
        target: Any = "predicted",
        pad_token_id: int | None = None,
        special_ids: Sequence[int] = (),
        memory_budget: int | None = None,
        device: torch.device | None = None,
        tolerance: float = 1e-3,
        rule: str | None = None,
        idgi: bool = False,
        background: int | None = None,
        max_sigma: float | None = None,
        fraction: float | None = None,
        max_dist: float | None = None,
        n_samples: int | None = None,
        stdevs: float | None = None,
    ):
        self.model = model
        self.forward = _Forward(model)
        family_options = {
            "max_sigma": max_sigma,
            "fraction": fraction,
            "max_dist": max_dist,
            "n_samples": n_samples,
            "stdevs": stdevs,
        }
        self.choice = choose_method(
            method,
            rule=rule,
            idgi=idgi,
            n_steps=n_steps,
            baseline=baseline,
            layer=layer,
            background=background,
            **family_options,
        )
        self.n_steps = self.choice.n_steps
        checked("tolerance", arguments.check_tolerance, tolerance)
        if memory_budget is not None:
            checked("memory_budget", parse_bytes, memory_budget)
        self.baseline = self.choice.baseline
        self.layer_name = layer
        self.target = target
        self.pad_token_id = pad_token_id
        self.special_ids = tuple(special_ids)
        self.memory_budget = memory_budget
        self.tolerance = tolerance
        self.device = device or torch.device("cpu")
        self.background: torch.Tensor | None = None
        self.layer = resolve_layer(model, layer) if layer else None
        self.n_outputs: int | None = None
        # mean: the data's mean per position/feature; invert: its max + min (see fit_baseline).
        self._statistic: torch.Tensor | None = None
        self._explainer: CoreExplainer | None = None

    # -- checks before anything is written

    def validate(
        self, x: torch.Tensor, extra: tuple = (), parameter: str = "inputs", labels: torch.Tensor | None = None
    ) -> None:
        """Check the options, the model and the data on the first example, attributing it as every batch will be;
        raises :class:`InputError` on any problem, before anything is written."""
        self._check_inputs(x)
        one = x[:1].to(self.device)
        extra_one = tuple(e[:1].to(self.device) for e in extra)
        out = self._first_output(one, extra_one, parameter)
        # The baseline must fit the inputs (e.g. gaussian_blur needs images): a batch of one has the shape of
        # every batch but its length.
        base = self.baselines_for(x[:1])
        self._check_output(out)
        self._check_target(labels)
        first_labels = labels[:1] if isinstance(labels, torch.Tensor) else None
        targets = self.targets_for(one, extra_one, labels=first_labels, logits=out.detach().cpu())
        try:
            self._explain(one, base, targets, extra_one, seed=0, n_steps=self.n_steps)
        except InputError:
            raise
        except BATCH_ERRORS as exc:
            # The options passed the library's checks in the constructor: what fails now is the model or the layer.
            culprit = "layer" if self.layer is not None else "model"
            what = f"to layer {self.layer_name!r}" if self.layer is not None else "the model's output"
            raise InputError(culprit, f"attributing {what} fails on the first example: {_describe(exc)}") from exc

    def use_background(self, rows: torch.Tensor) -> None:
        """The background of expected gradients and GradientSHAP: ``(M, ...)`` examples shaped like the inputs (see
        :func:`background_indices` for drawing them)."""
        if self.choice.background is None:
            raise InputError("background", f"{self.choice.family} takes no background")
        self.background = rows.detach().cpu()
        self._explainer = None

    def _check_inputs(self, x: torch.Tensor) -> None:
        """Integer inputs need an embedding layer (the first one, unless one was named); the family and the baseline
        must fit the inputs."""
        self._check_family(x)
        if not x.is_floating_point() and self.layer is None:
            guess = _first_embedding(self.model)
            if guess is None:
                raise InputError(
                    "layer",
                    f"inputs are integers ({x.dtype}); integrated gradients needs float inputs or a layer, the "
                    "embedding layer that consumes them",
                )
            self.layer_name = guess
            self.layer = resolve_layer(self.model, guess)
        if self.baseline == "token" and x.is_floating_point():
            raise InputError("baseline", "'token' is for integer token ids; use zeros, mean, invert, ...")
        if self.baseline is not None and self.baseline not in BASELINE_NAMES:
            raise InputError("baseline", f"unknown baseline {self.baseline!r}; choose from {', '.join(BASELINE_NAMES)}")

    def _check_family(self, x: torch.Tensor) -> None:
        """Integer token ids are for ig (at their embedding layer); image families need (N, C, H, W) images; a
        background must be given and shaped like the inputs."""
        family = self.choice.family
        title = FAMILY_TITLES[family]
        if family != "ig" and not x.is_floating_point():
            raise InputError(
                "method",
                f"{family} ({title}) attributes floating-point inputs, and these are integers ({x.dtype}); token ids "
                "are attributed at their embedding layer by ig",
            )
        if family in IMAGE_FAMILIES and x.dim() != 4:
            raise InputError(
                "method",
                f"{family} ({title}) attributes images shaped (N, C, H, W); these inputs have shape {tuple(x.shape)}",
            )
        if self.choice.background is not None:
            if self.background is None:
                raise InputError("background", f"{title} needs its background rows: call use_background first")
            if tuple(self.background.shape[1:]) != tuple(x.shape[1:]):
                raise InputError(
                    "background",
                    f"background rows of shape {tuple(self.background.shape[1:])} do not fit inputs of shape "
                    f"{tuple(x.shape[1:])}",
                )

    def _first_output(self, one: torch.Tensor, extra_one: tuple, parameter: str) -> torch.Tensor:
        """The model on one example (and on a batch of two: integrated gradients needs batches), seeing the layer."""
        seen: list[bool] = []
        with _hooked(self.layer, self.layer_name, lambda m, i, o: seen.append(True)):
            try:
                with torch.no_grad():
                    out = self.forward(one, *extra_one)
            except Exception as exc:
                raise InputError(
                    parameter,
                    f"the model rejected an input of shape {tuple(one.shape)} ({one.dtype}): {_describe(exc)}",
                ) from exc
        # A model fixed to one batch size (e.g. exported without a dynamic batch dimension) is caught here, not
        # half-way through.
        try:
            with torch.no_grad():
                self.forward(one.expand(2, *one.shape[1:]), *(e.expand(2, *e.shape[1:]) for e in extra_one))
        except Exception as exc:
            raise InputError(
                "model",
                f"the model accepts one example but not a batch of two ({_describe(exc)[:200]}); integrated "
                "gradients needs batches: export with a dynamic batch dimension (torch.export.Dim)",
            ) from exc
        if self.layer is not None and not seen:
            raise InputError("layer", f"layer {self.layer_name!r} is not used by the model's forward pass")
        return out

    def _check_output(self, out: torch.Tensor) -> None:
        if out.dim() == 0 or out.shape[0] != 1:
            raise InputError(
                "model",
                f"the model's output for one example has shape {tuple(out.shape)}; expected (1,) or (1, outputs)",
            )
        if out.dim() > 2:
            raise InputError(
                "model", f"outputs of shape {tuple(out.shape)} are not supported; return (N,) scores or (N, outputs)"
            )
        self.n_outputs = None if out.dim() == 1 else int(out.shape[1])

    def _check_target(self, labels: torch.Tensor | None) -> None:
        t, n = self.target, self.n_outputs
        if isinstance(t, int):
            if n is None:
                raise InputError("target", f"{t} given, but the model returns one score per example; leave it out")
            if not 0 <= t < n:
                raise InputError("target", f"{t} is out of range for a model with {n} outputs (0..{n - 1})")
        elif t == "label":
            if labels is None:
                raise InputError("target", "'label' needs labels in the data (array 'y')")
            if isinstance(labels, torch.Tensor) and n is not None and labels.numel():
                low, high = int(labels.min()), int(labels.max())
                if not (0 <= low and high < n):
                    raise InputError("target", f"labels range over {low}..{high}, outside the model's {n} outputs")

    # -- the work

    def targets_for(
        self,
        x: torch.Tensor,
        extra: tuple = (),
        labels: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        indices: Sequence[int] | None = None,
    ) -> torch.Tensor | None:
        """Targets of a batch: the predicted class, a fixed class or the labels.

        Labels outside the model's outputs raise :class:`InputError` naming the
        example (its position in ``indices``, the batch's examples in the data).
        """
        if self.n_outputs is None:
            return None
        if isinstance(self.target, int):
            return torch.full((x.shape[0],), self.target, dtype=torch.long)
        if self.target == "label":
            if labels is None:
                raise InputError("target", "'label' needs labels in the data (array 'y')")
            labels = labels.to(torch.long).cpu().reshape(-1)
            bad = ((labels < 0) | (labels >= self.n_outputs)).nonzero().flatten().tolist()
            if bad:
                where = [int(indices[i]) if indices is not None else i for i in bad]
                shown = ", ".join(f"{int(labels[i])} (example {w})" for i, w in zip(bad[:5], where[:5]))
                raise InputError(
                    "target",
                    f"label{'s' if len(bad) > 1 else ''} {shown}"
                    f"{', ...' if len(bad) > 5 else ''} {'are' if len(bad) > 1 else 'is'} outside "
                    f"the model's {self.n_outputs} outputs (0..{self.n_outputs - 1})",
                )
            return labels
        if logits is None:
            logits = self.predict(x, extra)
        return logits.argmax(dim=1).cpu()

    def predict(self, x: torch.Tensor, extra: tuple = ()) -> torch.Tensor:
        with torch.no_grad():
            out = self.forward(x.to(self.device), *(e.to(self.device) for e in extra))
        return out.detach().cpu()

    def fit_baseline(self, batches: Iterable[torch.Tensor], log: Callable[[str], None] | None = None) -> int | None:
        """Take the statistics of ``mean`` and ``invert`` over all the examples in ``batches``.

        The baseline of every example is then the mean (for ``invert``:
        ``max + min − x``, max and min) per position/feature over the whole
        data, so it does not depend on how the examples fall into batches.
        Inputs that are 4-D images keep each image's own mean colour per
        channel, and other baselines need nothing: then nothing is read.
        With a single example the baseline is that example and every
        attribution is zero; ``log`` is told so.

        Returns
        -------
        int or None
            The number of examples read, None when nothing was needed.
        """
        if self.baseline not in DATA_BASELINES:
            return None
        total = low = high = None
        count = 0
        for xb in batches:
            if not xb.is_floating_point() or xb.dim() == 4:
                return None
            xb = xb.detach().to("cpu", torch.float64)
            if self.baseline == "mean":
                part = xb.sum(dim=0)
                total = part if total is None else total + part
            else:
                lo, hi = xb.amin(dim=0), xb.amax(dim=0)
                low = lo if low is None else torch.minimum(low, lo)
                high = hi if high is None else torch.maximum(high, hi)
            count += xb.shape[0]
        if count == 0:
            return 0
        self._statistic = total / count if self.baseline == "mean" else high + low
        if count == 1 and log is not None:
            log(
                f"integrad: warning: the baseline {self.baseline!r} of a single example is the example itself, "
                "so every attribution is zero; use zeros, uniform, ... or more examples"
            )
        return count

    def baselines_for(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor | None:
        """The baselines of a batch; None for the families without one (and XRAI's own, each image's range)."""
        if self.baseline is None and x.is_floating_point():
            return None
        stat = self._statistic
        if stat is not None and x.is_floating_point() and tuple(x.shape[1:]) == tuple(stat.shape):
            stat = stat.to(x.dtype)
            if self.baseline == "mean":
                return stat.expand_as(x).clone()
            return stat - x
        return make_baselines(self.baseline, x, seed, self.pad_token_id, self.special_ids)

    def describe_failure(
        self,
        exc: BaseException,
        where: str,
        x: torch.Tensor | None = None,
        extra: tuple = (),
        indices: Sequence[int] | None = None,
    ) -> str:
        """One line for ``exc`` raised by the batch ``x`` described by ``where``.

        An :class:`InputError` already names what is wrong. For other errors
        each example of the batch is run through the model alone, and those
        it refuses with the same kind of error are named (``indices`` are
        their places in the data); if none is, the batch as a whole is.
        """
        if isinstance(exc, InputError):
            return f"{where}: {exc.message}"
        culprits = []
        if x is not None and x.shape[0] > 1:
            indices = list(range(x.shape[0])) if indices is None else list(indices)
            for i, place in enumerate(indices):
                try:
                    self.predict(x[i : i + 1], tuple(e[i : i + 1] for e in extra))
                except type(exc):
                    culprits.append(place)
                except Exception:
                    pass
        if culprits:
            shown = ", ".join(map(str, culprits[:10])) + (", ..." if len(culprits) > 10 else "")
            where = f"example{'s' if len(culprits) > 1 else ''} {shown} ({where})"
        return f"{where}: {_describe(exc)}"

    def attribute(self, x: torch.Tensor, targets: torch.Tensor | None, extra: tuple = (), seed: int = 0) -> BatchResult:
        """Attributions, convergence deltas and steps used for one batch.

        Random baselines come from a generator seeded with ``seed``, and so do
        the draws of expected gradients (their explainer's ``seed``) and of
        GradientSHAP (torch's and numpy's global generators, see
        :func:`seeded_random`), so the same batch and seed give the same
        numbers in any process. Deltas and steps are per example: averaged
        and added up over the example's paths where a method integrates
        several (see :func:`_per_example`).
        """
        return self._explain(x, self.baselines_for(x, seed), targets, extra, seed, self.n_steps)

    def _explain(
        self,
        x: torch.Tensor,
        base: torch.Tensor | None,
        targets: torch.Tensor | None,
        extra: tuple,
        seed: int,
        n_steps: Any,
    ) -> BatchResult:
        x = x.to(self.device)
        base = None if base is None else base.to(self.device)
        extra = tuple(e.to(self.device) for e in extra)
        tgt = None if targets is None else targets.to(self.device)
        explainer = self.explainer
        if isinstance(explainer, ExpectedGradients):
            # The explainer seeds its own generator from .seed at every call: each batch gets the batch's seed, as
            # random baselines do, so that a batch's draws do not depend on which process or run computes it.
            explainer.seed = int(seed)
        with seeded_random(seed):
            attr = explainer.attribute((x, *extra), tgt, baselines=base)
        if isinstance(attr, (tuple, list)):
            attr = attr[0]
        n = x.shape[0]
        steps = getattr(explainer.last_report, "steps", None)
        if steps is None:
            steps = torch.full((n,), n_steps if isinstance(n_steps, int) else 0, dtype=torch.long)
        return BatchResult(
            attr.detach().cpu(),
            _per_example(explainer.last_delta.detach().reshape(-1).cpu(), n, self.choice.family, mean=True),
            _per_example(torch.as_tensor(steps).reshape(-1).to(torch.long).cpu(), n, self.choice.family, mean=False),
            None if targets is None else targets.cpu(),
        )

    @property
    def explainer(self) -> CoreExplainer:
        """The explainer every batch goes through: one object per layer, so that what its core learns about
        chunk sizes carries over from batch to batch."""
        if self._explainer is None or getattr(self._explainer, "layer", None) is not self.layer:
            self._explainer = _build_explainer(
                self.choice, self.forward, self.layer, self.background, self._core_options()
            )
        return self._explainer

    def _core_options(self) -> dict[str, Any]:
        """The keywords every family's explainer passes to its core: the batch reading, the memory budget, and the
        tolerance of ``n_steps="auto"``."""
        options: dict[str, Any] = {
            "forward_arg_extractor": operator.itemgetter(0),
            "additional_forward_arg_extractor": _additional,
        }
        if self.memory_budget is not None:
            options["memory_budget"] = self.memory_budget
        if self.n_steps == "auto":
            options["tolerance"] = self.tolerance
        return options


def _build_explainer(
    choice: MethodChoice, forward: nn.Module, layer: nn.Module | None, background: torch.Tensor | None, options: dict
) -> CoreExplainer:
    """The explainer of ``choice``'s family, configured with its options."""
    family, own = choice.family, dict(choice.options)
    if choice.rule is not None:
        options = {**options, "method": choice.rule}
    if family == "ig":
        return IntegratedGradientsExplainer(forward, n_steps=choice.n_steps, layer=layer, idgi=choice.idgi, **options)
    if family == "blur":
        return BlurIntegratedGradients(forward, n_steps=choice.n_steps, idgi=choice.idgi, **own, **options)
    if family == "guided":
        return GuidedIntegratedGradients(forward, n_steps=choice.n_steps, idgi=choice.idgi, **own, **options)
    if family == "expected":
        return ExpectedGradients(forward, background, n_steps=choice.n_steps, **own, **options)
    if family == "gradientshap":
        return GradientShap(forward, background, **own, **options)
    return XRAI(forward, n_steps=choice.n_steps, **options)


def _per_example(values: torch.Tensor, n: int, family: str, mean: bool) -> torch.Tensor:
    """One value per example of what a core reports per path: GradientSHAP's deltas per draw and expected gradients'
    steps per background row come example by example, XRAI's steps baseline by baseline. Deltas are averaged (the
    attributions are the mean over the paths), steps added up (the points evaluated for the example)."""
    if values.numel() == n or n == 0:
        return values
    per_path = values.view(-1, n).transpose(0, 1) if family == "xrai" else values.view(n, -1)
    return per_path.mean(1) if mean else per_path.sum(1)


def _additional(batch: tuple) -> tuple | None:
    """The arguments after the inputs in a job's batch ``(inputs, *extra)``."""
    return tuple(batch[1:]) or None


def _describe(exc: BaseException) -> str:
    """An exception as one line: its message for :class:`InputError`, ``Type: message`` otherwise."""
    if isinstance(exc, InputError):
        return f"{exc.parameter}: {exc.message}"
    msg = " ".join(str(exc).split())
    if len(msg) > 300:
        msg = msg[:300] + "..."
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# --------------------------------------------------------------------------- data-set runs


def _weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if not isinstance(t, torch.Tensor):
            continue
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _shard_name(b: int) -> str:
    return f"shard-{b:05d}.safetensors"


def _describe_diff(old: dict, new: dict) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            if isinstance(a, dict) or isinstance(b, dict):
                parts.append(f"{key} differs")
            else:
                parts.append(f"{key}: {a!r} there, {b!r} now")
    return "; ".join(parts)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    active: bool = False

    def barrier(self):
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def _init_distributed(device_arg: str) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise InputError("device", "cuda was asked for but PyTorch sees no CUDA device; use cpu or auto")
    use_cuda = device_arg == "cuda" or (device_arg == "auto" and torch.cuda.is_available())
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world <= 1:
        return _Dist(), device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(rank, world, True), device


def _valid_shard(path: Path, params_hash: str) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            keys = set(fh.keys())
    except Exception:
        return False
    return meta.get("params_hash") == params_hash and {"attributions", "deltas", "indices"} <= keys


def attribute_dataset(
    model: str,
    data: str,
    out: str | os.PathLike,
    *,
    target: Any = "predicted",
    batch_size: int = 32,
    n_steps: Any = None,
    method: str = "ig",
    baseline: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    tolerance: float = 1e-3,
    memory_budget: int | None = None,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
    rule: str | None = None,
    idgi: bool = False,
    background: int | None = None,
    max_sigma: float | None = None,
    fraction: float | None = None,
    max_dist: float | None = None,
    n_samples: int | None = None,
    stdevs: float | None = None,
) -> Path:
    """Attribute every example of a data set into a folder of shards.

    Parameters
    ----------
    model, data : str
        Model and data specifications (see :func:`integrad.app.io.load_model` and :func:`integrad.app.io.open_data`).
    out : path
        Output folder. An existing folder must hold a run with the same parameters (it is then resumed) or be empty.
    target : "predicted", "label" or int
    batch_size : int
        Examples per batch and per shard.
    n_steps : int, "auto" or None
        Path points per example; None: the family's default (50; expected gradients then sample their positions).
    method : str
        A family of :data:`FAMILIES` (default ``ig``) or a quadrature rule (``ig`` with that rule); see
        :func:`choose_method`.
    baseline, layer
        As for :class:`Attributor`. ``mean`` and ``invert`` take their statistics over the whole data set (one pass
        before the first batch), except for 4-D images (each image's own), so results do not depend on
        ``batch_size``.
    seed : int
        Seed of random baselines and of the sampled families' draws, 0 to :data:`SEED_MAX`; batch ``b`` uses
        ``seed * 1_000_003 + b``, the background draw ``seed`` itself.
    tolerance, memory_budget, device, progress
        The error allowed with ``n_steps="auto"``; bytes for path points; ``"auto"``, ``"cpu"`` or ``"cuda"``; a
        progress bar on standard error.
    rule, idgi, max_sigma, fraction, max_dist, n_samples, stdevs
        The family's options (see :func:`choose_method`).
    background : int, optional
        For expected gradients and GradientSHAP: this many examples of the data, drawn without replacement, are the
        background.

    Returns
    -------
    pathlib.Path
        The output folder.

    Raises
    ------
    InputError
        For unusable arguments, before anything is written; and for an example that cannot be attributed (a label
        out of range, a value the model refuses) found part-way, naming the batch and the examples. The shards
        finished before it stay, and the same call resumes after them.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    seed = check_seed(seed)
    # Options that do not fit the family are refused before the data and the model are read.
    method_options = _chosen_family(locals())
    choose_method(**method_options, layer=layer)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("out", f"exists and is not a folder: {out}")
    run = {"target": target, "batch_size": batch_size, "layer": layer, "seed": seed, "tolerance": tolerance}
    run.update(memory_budget=memory_budget, progress=progress, log=log)
    dist_, dev = _init_distributed(device)
    try:
        return _run(model, data, out, dist_, dev, method_options, **run)
    finally:
        if dist_.active:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()


#: The arguments of :func:`attribute_dataset` that choose the method family and configure it.
_METHOD_ARGUMENTS = (
    "method",
    "n_steps",
    "baseline",
    "rule",
    "idgi",
    "background",
    "max_sigma",
    "fraction",
    "max_dist",
    "n_samples",
    "stdevs",
)


def _chosen_family(arguments: dict[str, Any]) -> dict[str, Any]:
    """The family's options among a call's arguments."""
    return {name: arguments[name] for name in _METHOD_ARGUMENTS}


def _run(
    model_spec,
    data_spec,
    out: Path,
    dist_: _Dist,
    dev,
    method_options: dict,
    *,
    target,
    batch_size,
    layer,
    seed,
    tolerance,
    memory_budget,
    progress,
    log,
) -> Path:
    source: DataSource = open_data(data_spec)
    net = load_model(model_spec).to(dev)
    att = Attributor(
        net, **method_options, layer=layer, target=target, memory_budget=memory_budget, device=dev, tolerance=tolerance
    )
    if att.choice.background is not None:
        picked = background_indices(att.choice.background, len(source), seed)
        try:
            att.use_background(source.batch(picked))
        except BATCH_ERRORS as exc:
            raise InputError("data", f"reading the background examples failed: {_describe(exc)}") from exc
    first, first_label = source.batch_with_labels([0])
    labels_known = source.labels if source.labels is not None else (first_label if source.has_labels else None)
    att.validate(first, parameter="data", labels=labels_known)
    job = _Job(source, att, out, dist_, batch_size, seed, log)
    try:
        fitted = att.fit_baseline(
            (source.batch(job.indices(b)) for b in range(job.n_batches)), log=log if dist_.rank == 0 else None
        )
    except BATCH_ERRORS as exc:
        raise InputError(
            "data", f"reading every example for baseline {att.baseline!r} failed: {_describe(exc)}"
        ) from exc
    params = {
        "model": model_spec,
        "model_fingerprint": {**model_fingerprint(model_spec), "weights_sha256": _weights_hash(net)},
        "data": data_spec,
        "data_fingerprint": source.fingerprint,
        "n_examples": len(source),
        **att.choice.parameters(),
        "target": target,
        "tolerance": tolerance if att.n_steps == "auto" else None,
        **({"baseline_statistics": "whole data set"} if fitted else {}),
        "layer": att.layer_name,
        "batch_size": batch_size,
        "seed": seed,
        "integrad_version": _version(),
    }
    job.claim_folder(params)
    job.attribute_pending(progress)
    return out


@dataclass
class _Job:
    """A data set's attribution in shards of ``batch_size`` examples, on one process of ``dist_``."""

    source: DataSource
    att: Attributor
    out: Path
    dist_: _Dist
    batch_size: int
    seed: int
    log: Callable[[str], None]
    params_hash: str = ""

    @property
    def n(self) -> int:
        return len(self.source)

    @property
    def n_batches(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def indices(self, b: int) -> list[int]:
        return list(range(b * self.batch_size, min(self.n, (b + 1) * self.batch_size)))

    def claim_folder(self, params: dict) -> None:
        """Rank 0 decides whether the folder may be used (a run with other parameters there is refused); the
        others follow its verdict."""
        verdict = None
        if self.dist_.rank == 0:
            try:
                verdict = (
                    "ok",
                    _prepare_folder(self.out, params, _params_hash(params), self.n_batches, self.dist_.world),
                )
            except InputError as exc:
                verdict = ("error", exc.parameter, exc.message)
        verdict = self.dist_.broadcast(verdict)
        if verdict[0] == "error":
            raise InputError(*verdict[1:])
        self.params_hash = verdict[1]

    def pending(self) -> list[int]:
        """The batches without a valid shard; shards are whole by construction, and one from another run is redone
        rather than mixed in."""
        done = {b for b in range(self.n_batches) if (self.out / _shard_name(b)).exists()}
        pending = [
            b
            for b in range(self.n_batches)
            if b not in done or not _valid_shard(self.out / _shard_name(b), self.params_hash)
        ]
        if self.dist_.rank == 0 and done:
            if pending:
                self.log(
                    f"integrad: resuming: {self.n_batches - len(pending)} of {self.n_batches} batches already done"
                )
            else:
                self.log(f"integrad: all {self.n_batches} batches already done")
        return pending

    def attribute_pending(self, progress: bool) -> None:
        """This process's share of the pending batches (batch ``b`` goes to rank ``b % world``), one shard each."""
        pending = self.pending()
        mine = [b for b in pending if b % self.dist_.world == self.dist_.rank]
        show = progress and self.dist_.rank == 0 and bool(pending)
        what = "attributing" + (f" (rank 0/{self.dist_.world})" if self.dist_.world > 1 else "")
        with progress_bar(sum(len(self.indices(b)) for b in mine), what, show) as bar:
            for b in mine:
                self.attribute_batch(b)
                bar.update(len(self.indices(b)))
                if self.dist_.rank == 0:
                    _update_progress(self.out, self.n_batches)
        self.dist_.barrier()
        if self.dist_.rank == 0:
            _update_progress(self.out, self.n_batches)

    def attribute_batch(self, b: int) -> None:
        idx = self.indices(b)
        x = None
        try:
            x, labels = self.source.batch_with_labels(idx)
            targets = self.att.targets_for(x, labels=labels, indices=idx)
            res = self.att.attribute(x, targets, seed=self.seed * 1_000_003 + b)
        except BATCH_ERRORS as exc:
            raise _batch_failure(exc, self.att, x, idx, b, self.out, self.n_batches) from exc
        tensors = {
            "attributions": res.attributions,
            "deltas": res.deltas,
            "indices": torch.as_tensor(idx, dtype=torch.long),
            "steps": res.steps,
        }
        if res.targets is not None:
            tensors["targets"] = res.targets
        save_tensors(self.out / _shard_name(b), tensors, {"params_hash": self.params_hash, "batch": b})


def _batch_failure(
    exc: BaseException, att: Attributor, x: torch.Tensor | None, idx: list, b: int, out: Path, n_batches: int
) -> InputError:
    """The one-line error for batch ``b`` that could not be attributed, saying what was kept."""
    span = f"examples {idx[0]}..{idx[-1]}" if len(idx) > 1 else f"example {idx[0]}"
    what = att.describe_failure(exc, f"batch {b}, {_shard_name(b)}, {span}", x, indices=idx)
    parameter = exc.parameter if isinstance(exc, InputError) else "data"
    kept = sum(1 for k in range(n_batches) if (out / _shard_name(k)).exists())
    shards = "the finished shard is kept" if kept == 1 else f"the {kept} finished shards are kept"
    return InputError(
        parameter,
        f"{what}; {shards} in {out}, and rerunning the same command resumes after {'it' if kept == 1 else 'them'}",
    )


def _same_data_file(old: dict, new: dict) -> bool:
    """Whether two runs name the same data file or image folder in two spellings ('./x.npz', 'x.npz', ...).

    Their content fingerprints decide; ``module:factory`` data must be named the same.
    """
    fp_old, fp_new = old.get("data_fingerprint"), new.get("data_fingerprint")
    return isinstance(fp_new, dict) and fp_new.get("kind") in ("file", "image-folder") and fp_old == fp_new


def _prepare_folder(out: Path, params: dict, phash: str, n_batches: int, world: int) -> str:
    """Check ``out`` against a run there, or start one; returns the parameter hash the shards carry."""
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError("out", f"cannot read {manifest_path}: {exc}") from exc
        old_params = old.get("parameters") or {}
        if old_params.get("data") != params["data"] and _same_data_file(old_params, params):
            # The same data under another path: keep the name the folder was made with.
            params = {**params, "data": old_params["data"]}
            phash = _params_hash(params)
        if old.get("format") != FORMAT or old.get("parameters") != params:
            diff = _describe_diff(old.get("parameters") or {}, params)
            if diff == "model_fingerprint differs":
                diff = (
                    "the model's weights differ from that run's; a factory must build the same weights "
                    "every time, e.g. by loading a checkpoint"
                )
            raise InputError(
                "out",
                f"{out} holds attributions made with different parameters ({diff or 'unknown format'}); "
                "refusing to mix them: choose another folder or delete that one",
            )
        # Leftovers of writes that were cut short.
        for tmp in out.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        return phash
    if out.exists() and any(out.iterdir()):
        raise InputError("out", f"{out} is not empty and has no {MANIFEST}; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(
        manifest_path,
        {
            "format": FORMAT,
            "parameters": params,
            "params_hash": phash,
            "n_batches": n_batches,
            "shard_pattern": "shard-{batch:05d}.safetensors",
            "created": now,
            "world_size": world,
            "progress": {"batches_done": 0, "batches_total": n_batches, "complete": False, "updated": now},
        },
    )
    return phash


def _update_progress(out: Path, n_batches: int) -> None:
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    count = sum(1 for p in out.iterdir() if SHARD_RE.match(p.name) and int(SHARD_RE.match(p.name).group(1)) < n_batches)
    manifest["progress"] = {
        "batches_done": count,
        "batches_total": n_batches,
        "complete": count == n_batches,
        "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(manifest_path, manifest)


# --------------------------------------------------------------------------- reading back


def summarize(folder: str | os.PathLike) -> dict:
    """Shards present, examples covered and the largest ``|delta|``, reading only the small tensors."""
    from safetensors import safe_open

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    shards, examples, worst = 0, 0, 0.0
    for b in range(int(manifest["n_batches"])):
        path = folder / _shard_name(b)
        if not path.exists():
            continue
        with safe_open(str(path), framework="pt") as fh:
            deltas = fh.get_tensor("deltas")
        shards += 1
        examples += int(deltas.numel())
        if deltas.numel():
            largest = float(deltas.abs().max())  # NaN when a delta is (a model with non-finite gradients)
            if largest > worst or math.isnan(largest):  # once NaN, worst stays NaN: nothing compares greater
                worst = largest
    return {"shards": shards, "n_batches": int(manifest["n_batches"]), "examples": examples, "max_abs_delta": worst}


class AttributionSet(tuple):
    """``(attributions, deltas)`` in data-set order, with more fields as attributes.

    Attributes
    ----------
    attributions : torch.Tensor
    deltas : torch.Tensor
    indices : torch.LongTensor
        Example indices (``arange(N)`` for a complete folder).
    targets : torch.LongTensor or None
    steps : torch.LongTensor
    manifest : dict
    """

    def __new__(cls, attributions, deltas, indices, targets, steps, manifest):
        self = super().__new__(cls, (attributions, deltas))
        self.indices = indices
        self.targets = targets
        self.steps = steps
        self.manifest = manifest
        return self

    @property
    def attributions(self) -> torch.Tensor:
        return self[0]

    @property
    def deltas(self) -> torch.Tensor:
        return self[1]


def load_attributions(folder: str | os.PathLike, allow_partial: bool = False) -> AttributionSet:
    """Read a folder written by ``integrad attribute-dataset``.

    Parameters
    ----------
    folder : path
    allow_partial : bool
        Return the shards present even if the run has not finished (the
        ``indices`` attribute says which examples they cover).

    Returns
    -------
    AttributionSet
        Unpacks as ``attributions, deltas``; also has ``indices``,
        ``targets``, ``steps`` and ``manifest``.
    """
    from safetensors import safe_open

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"folder: no {MANIFEST} in {folder}; not an integrad attribution folder")
    manifest = json.loads(manifest_path.read_text())
    phash = manifest["params_hash"]
    n_batches = int(manifest["n_batches"])
    parts = {k: [] for k in ("attributions", "deltas", "indices", "targets", "steps")}
    missing = []
    for b in range(n_batches):
        path = folder / _shard_name(b)
        if not path.exists():
            missing.append(b)
            continue
        with safe_open(str(path), framework="pt") as fh:
            if (fh.metadata() or {}).get("params_hash") != phash:
                raise ValueError(f"folder: {path.name} belongs to another run (parameters differ)")
            for key in parts:
                if key in fh.keys():
                    parts[key].append(fh.get_tensor(key))
    if missing and not allow_partial:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(
            f"folder: {len(missing)} of {n_batches} batches are missing ({shown}); rerun the same "
            "attribute-dataset command to finish, or pass allow_partial=True"
        )
    if not parts["attributions"]:
        empty = torch.empty(0)
        return AttributionSet(empty, empty, torch.empty(0, dtype=torch.long), None, empty, manifest)
    indices = torch.cat(parts["indices"])
    order = torch.argsort(indices)

    def cat(key):
        return torch.cat(parts[key])[order] if parts[key] and len(parts[key]) == len(parts["indices"]) else None

    return AttributionSet(cat("attributions"), cat("deltas"), indices[order], cat("targets"), cat("steps"), manifest)
