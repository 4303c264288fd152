"""Hyperparameter search for explainers: pick the configuration that scores best on an evaluation metric.

:func:`optimize` searches an explainer's :meth:`~integrad.explainers.Explainer.get_tunables` space with Optuna,
scoring each configuration by the mean of a metric from :mod:`integrad.metrics` over the given examples. Optuna is an
optional dependency: ``pip install integrad[tune]``.

References
----------
Akiba, Sano, Yanase, Ohta, Koyama. Optuna: A Next-generation Hyperparameter Optimization Framework. KDD 2019.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..arguments import check_bool, check_choice, check_positive_int, is_int
from ..explainers.integrated_gradients import check_targets as check_explainer_targets
from .metrics import METRICS

__all__ = ["OptimizationResult", "grid_values", "optimize"]

_SAMPLERS = ("tpe", "random", "grid")
# Options a metric may take that the tuner can fill from the trial's explainer.
_EXPLAINER_OPTIONS = ("forward_arg_extractor", "additional_forward_arg_extractor")


@dataclass
class OptimizationResult:
    """Outcome of :func:`optimize`.

    Attributes
    ----------
    explainer : Explainer
        A copy of the input explainer at the best configuration found.
    value : float
        Its objective: the mean metric over the examples.
    params : dict
        The best point of the search space, ``{name: value}`` as in ``get_tunables``.
    study : optuna.study.Study
        The study, with every trial (failed ones included).
    """

    explainer: Any
    value: float
    params: dict[str, Any] = field(default_factory=dict)
    study: Any = None


def _import_optuna():
    try:
        import optuna
    except ImportError as error:  # pragma: no cover - exercised only without the extra installed
        raise ImportError(
            "integrad.tune.optimize needs optuna; install it with `pip install integrad[tune]` "
            "(or `pip install optuna`)"
        ) from error
    return optuna


def _resolve_metric(metric: str | Callable[..., Any]) -> Callable[..., Any]:
    if isinstance(metric, str):
        try:
            return METRICS[check_choice("metric", metric, tuple(METRICS))]
        except ValueError as error:
            raise ValueError(f"{error} (the names in integrad.metrics; or pass a metric function)") from None
    if not callable(metric):
        raise TypeError(
            "metric must be a callable metric(model, inputs, attributions, targets, **options) -> Tensor[N] "
            f"or the name of one in integrad.metrics; got {type(metric).__name__}"
        )
    if not isinstance(getattr(metric, "higher_is_better", None), bool):
        raise TypeError("metric must have a bool attribute higher_is_better, which sets the direction of the search")
    return metric


def _check_space(space: dict[str, tuple[type, dict[str, Any]]]) -> None:
    if not isinstance(space, dict) or not space:
        raise ValueError("the search space is empty: the explainer has no tunables (or tunables={} was passed)")
    for name, entry in space.items():
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], dict)):
            raise TypeError(f"tunable {name!r} must be (type, space dict), got {entry!r}")
        kind, spec = entry
        if kind in (int, float):
            if "low" not in spec or "high" not in spec or not spec["low"] <= spec["high"]:
                raise ValueError(f"tunable {name!r} needs low <= high, got {spec}")
        elif not spec.get("choices"):
            raise ValueError(f"tunable {name!r} of type {getattr(kind, '__name__', kind)} needs non-empty 'choices'")


def _fix_conditions(
    space: dict[str, tuple[type, dict[str, Any]]], current: dict[str, Any]
) -> dict[str, tuple[type, dict[str, Any]]]:
    # A condition ("when") on a parameter that is not searched is decided by the explainer's own value of it: a
    # baseline's parameter searched without the baseline choice tunes the explainer's own baseline, so it is
    # searched unconditionally when that baseline is the one named, and is an error otherwise.
    fixed: dict[str, tuple[type, dict[str, Any]]] = {}
    for name, (kind, spec) in space.items():
        when = spec.get("when")
        if when:
            for key, value in when.items():
                if key not in space and (key not in current or current[key] != value):
                    own = repr(current[key]) if key in current else "not one of the tunable values"
                    raise ValueError(
                        f"tunable {name!r} applies only when {key} is {value!r}, but {key!r} is not in the search "
                        f"space and the explainer's {key} is {own}; add {key!r} to tunables or tune an explainer "
                        f"with {key}={value!r}"
                    )
            inside = {key: value for key, value in when.items() if key in space}
            spec = {key: value for key, value in spec.items() if key != "when"}
            if inside:
                spec["when"] = inside
        fixed[name] = (kind, spec)
    return fixed


def _batch_of(explainer: Any, inputs: Any) -> tuple[int | None, torch.device | None]:
    # Number of examples and device of the first attributed tensor, as the explainer reads the batch.
    extract = getattr(explainer, "_extract_args", None)
    forward = extract(inputs)[0] if callable(extract) else inputs
    first = forward[0] if isinstance(forward, (tuple, list)) and forward else forward
    if not torch.is_tensor(first):
        return None, None
    return (int(first.shape[0]) if first.dim() > 0 else None), first.device


def _targets_tensor(targets: Any, n: int | None, device: torch.device | None) -> Any:
    # The forms the explainer accepts, checked as it checks them, as one LongTensor of shape (N,): the form every
    # metric takes. Without a tensor batch to count examples, they go on unchanged (the explainer checks them).
    if n is None:
        return targets
    targets = check_explainer_targets(targets, n, None)
    if targets is None:
        return None
    return torch.as_tensor(targets, dtype=torch.long, device=device).reshape(-1).expand(n).clone()


def grid_values(kind: type, spec: dict[str, Any], points: int = 5) -> list[Any]:
    """Finite values of one tunable, for grid search.

    Categories give their choices; ranges with a ``step`` give every step from ``low`` to ``high``; ranges without
    one give ``points`` values evenly spaced (geometrically when ``log``), rounded and deduplicated for ints.
    """
    if kind not in (int, float):
        return list(spec["choices"])
    low, high, step = spec["low"], spec["high"], spec.get("step")
    if step:
        count = int(math.floor((high - low) / step + 1e-9)) + 1
        values = [low + k * step for k in range(count)]
    elif spec.get("log"):
        values = list(np.geomspace(low, high, points))
    else:
        values = list(np.linspace(low, high, points))
    if kind is int:
        return sorted({int(round(v)) for v in values})
    return [round(float(v), 12) for v in values]


def _suggest(trial: Any, space: dict[str, tuple[type, dict[str, Any]]], conditional: bool) -> dict[str, Any]:
    params: dict[str, Any] = {}
    # Independent entries first: a dependent entry's condition refers to them.
    for name, (kind, spec) in sorted(space.items(), key=lambda item: "when" in item[1][1]):
        when = spec.get("when")
        if when:
            if not conditional or any(params.get(key) != value for key, value in when.items()):
                continue
        if kind is int:
            params[name] = trial.suggest_int(
                name, spec["low"], spec["high"], step=spec.get("step") or 1, log=bool(spec.get("log", False))
            )
        elif kind is float:
            params[name] = trial.suggest_float(
                name, spec["low"], spec["high"], step=spec.get("step"), log=bool(spec.get("log", False))
            )
        else:
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
    return params


def _in_space(value: Any, kind: type, spec: dict[str, Any]) -> bool:
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not spec["low"] <= value <= spec["high"]:
            return False
        step = spec.get("step")
        return not step or abs((value - spec["low"]) / step - round((value - spec["low"]) / step)) < 1e-9
    return value in spec["choices"]


def _metric_options(metric: Callable[..., Any], explainer: Any, seed: int | None) -> dict[str, Any]:
    try:
        parameters = inspect.signature(metric).parameters
    except (TypeError, ValueError):
        return {}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    options: dict[str, Any] = {}
    for name in _EXPLAINER_OPTIONS:
        value = getattr(explainer, name, None)
        if value is not None and (name in parameters or open_ended):
            options[name] = value
    if "explainer" in parameters:
        options["explainer"] = explainer
    if seed is not None and ("seed" in parameters or open_ended):
        options["seed"] = seed
    return options


class _NonFiniteScore(ArithmeticError):
    """A metric scored NaN or infinity: the trial fails, and the search goes on without it."""


def _non_finite_reason(metric: Callable[..., Any], scores: torch.Tensor, params: dict[str, Any]) -> str:
    name = getattr(metric, "__name__", type(metric).__name__)
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if not bad:
        return f"the mean of metric {name} over the examples overflows with {params}"
    kinds = sorted({"nan" if math.isnan(v) else "infinite" for v in scores[bad].tolist()})
    shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
    return (
        f"metric {name} is {' or '.join(kinds)} for {len(bad)} of {scores.numel()} example(s) (indices {shown}) "
        f"with {params}: it could not be computed there (a NaN or infinite model output or attribution, for "
        "instance), so this configuration cannot be ranked"
    )


@dataclass
class _Search:
    """What every trial shares: the explainer and examples, the metric and the space it is searched over."""

    explainer: Any
    current: dict[str, Any]
    inputs: Any
    targets: Any
    metric: Callable[..., Any]
    space: dict[str, tuple[type, dict[str, Any]]]
    grid: bool
    seed: int | None
    metric_kwargs: dict[str, Any]

    def enqueue_current(self, study: Any) -> None:
        """Try the explainer's own configuration (the part of it in the space) first, except on a grid."""
        if self.grid:
            return
        start = {name: v for name, v in self.current.items() if name in self.space and _in_space(v, *self.space[name])}
        if start:
            study.enqueue_trial(start)

    def objective(self, trial: Any) -> float:
        params = _suggest(trial, self.space, conditional=not self.grid)
        candidate = self.explainer.apply_tunables(params)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices, enabled=self.seed is not None):
            if self.seed is not None:
                torch.manual_seed(self.seed)
            attributions = candidate.attribute(self.inputs, self.targets)
            options = {**_metric_options(self.metric, candidate, self.seed), **self.metric_kwargs}
            scores = self.metric(candidate.model, self.inputs, attributions, self.targets, **options)
        scores = torch.as_tensor(scores).detach().to(torch.float64).reshape(-1)
        value = float(scores.mean())
        if not math.isfinite(value):
            # One example the metric cannot score makes the mean meaningless; the trial fails (Optuna logs why)
            # rather than entering the study with a value that would win or lose every comparison.
            reason = _non_finite_reason(self.metric, scores, params)
            trial.set_user_attr("failed_because", reason)
            raise _NonFiniteScore(reason)
        return value


def _check_settings(n_trials: Any, seed: Any, metric_kwargs: Any, verbose: Any) -> None:
    check_positive_int("n_trials", n_trials, allow_none=False)
    if seed is not None and not is_int(seed):
        raise TypeError(f"seed must be an int or None; got {seed!r}")
    if metric_kwargs is not None and not isinstance(metric_kwargs, dict):
        raise TypeError(
            f"metric_kwargs must be a dict of options for the metric, or None; got {type(metric_kwargs).__name__}"
        )
    check_bool("verbose", verbose)


def _make_sampler(
    optuna: Any, sampler: Any, space: dict[str, tuple[type, dict[str, Any]]], seed: int | None, n_trials: int
) -> tuple[Any, bool, int]:
    """The Optuna sampler, whether it searches a grid, and the number of trials (at most the grid's size)."""
    accepted = f"one of {', '.join(_SAMPLERS)}, or an optuna sampler"
    if isinstance(sampler, str):
        try:
            check_choice("sampler", sampler, _SAMPLERS)
        except ValueError as error:
            raise ValueError(f"{error} (or pass an optuna sampler)") from None
        if sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed), False, n_trials
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed), False, n_trials
        search_space = {name: grid_values(kind, spec) for name, (kind, spec) in space.items() if "when" not in spec}
        size = math.prod(len(values) for values in search_space.values())
        return optuna.samplers.GridSampler(search_space, seed=seed), True, min(n_trials, size)
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler, isinstance(sampler, optuna.samplers.GridSampler), n_trials
    raise TypeError(f"sampler must be {accepted}; got {type(sampler).__name__}")


def _result(optuna: Any, study: Any, explainer: Any) -> OptimizationResult:
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        failed = [t for t in study.trials if "failed_because" in t.user_attrs]
        first = f"; the first: {failed[0].user_attrs['failed_because']}" if failed else ""
        raise RuntimeError(
            f"no trial completed: all {len(study.trials)} trial(s) failed because the metric's score was NaN or "
            f"infinite{first}. Check the metric on these inputs, or narrow the search space"
        )
    best = study.best_trial
    return OptimizationResult(explainer.apply_tunables(dict(best.params)), float(best.value), dict(best.params), study)


def optimize(
    explainer: Any,
    inputs: Any,
    targets: Any,
    metric: str | Callable[..., Any],
    n_trials: int = 20,
    sampler: str | Any = "tpe",
    seed: int | None = None,
    metric_kwargs: dict[str, Any] | None = None,
    *,
    tunables: dict[str, tuple[type, dict[str, Any]]] | None = None,
    verbose: bool = False,
) -> OptimizationResult:
    """Search the explainer's tunables for the configuration with the best mean metric on ``inputs``.

    Each trial draws a point of the space, builds ``explainer.apply_tunables(point)`` (a copy; ``explainer`` is not
    changed), attributes ``inputs`` at ``targets``, and scores
    ``metric(model, inputs, attributions, targets, **options).mean()``. A trial where the metric scores NaN or
    infinity for any example fails: Optuna logs why (which examples, which configuration), the reason is kept in the
    trial's ``user_attrs["failed_because"]``, and the search goes on without it. For TPE and random search the
    explainer's own configuration (the part of it that lies in the space) is tried first, so when all of it lies
    there the result scores at least as well as the explainer on these examples.

    Parameters
    ----------
    explainer : Explainer
        The explainer to tune; its ``get_tunables(inputs)`` is the search space.
    inputs : torch.Tensor or tuple
        A batch, as ``explainer.attribute`` takes it.
    targets : torch.LongTensor of shape (N,), int, sequence of int, or None
        Output index per example; an int (or a one-element sequence or tensor) is used for every example. The
        metric receives them as a LongTensor of shape (N,).
    metric : callable or str
        ``metric(model, inputs, attributions, targets, **options) -> Tensor[N]`` with a bool attribute
        ``higher_is_better`` (which sets the direction), or the name of one in :mod:`integrad.metrics`.
    n_trials : int
        Number of trials; for grid search, at most the grid's size.
    sampler : {"tpe", "random", "grid"} or optuna sampler
        ``"grid"`` enumerates :func:`grid_values` of every independent tunable in a seeded random order; a
        baseline's own parameters (dependent entries) are not searched on a grid: the explainer's own baseline
        keeps its parameters, another baseline gets its defaults.
    seed : int, optional
        Seeds the sampler, the global torch RNG during each trial (restored afterwards; every trial sees the same
        noise), and is passed to metrics that take ``seed``.
    metric_kwargs : dict, optional
        Further options for the metric; they override the ones filled in here (the explainer's extractors and
        ``seed``, and ``explainer`` for metrics that take it).
    tunables : dict, optional
        A search space replacing ``explainer.get_tunables(inputs)`` (e.g. a subset of it). An entry's ``"when"``
        condition on a parameter outside the space is decided by the explainer's own value of it: a baseline's
        parameter (``"baseline_fn.gaussian_blur.sigma"``) searched without ``"baseline_fn"`` tunes the explainer's
        own baseline, so it is searched (on a grid too) when that baseline is the one named, and is an error when
        the explainer has another baseline.
    verbose : bool
        Keep Optuna's per-trial log messages.

    Returns
    -------
    OptimizationResult
        ``explainer`` at the best trial, its ``value``, ``params`` and the Optuna ``study``.

    Raises
    ------
    ImportError
        Optuna is not installed.
    ValueError
        An entry of the space applies only under a condition the explainer's own configuration does not meet (see
        ``tunables``), or ``targets`` do not match the number of examples.
    TypeError
        ``targets`` of another form than the ones above.
    RuntimeError
        Every trial failed (the metric scored NaN or infinity in each).
    """
    optuna = _import_optuna()
    metric = _resolve_metric(metric)
    _check_settings(n_trials, seed, metric_kwargs, verbose)
    space = explainer.get_tunables(inputs) if tunables is None else dict(tunables)
    _check_space(space)
    current = explainer.current_tunables() if hasattr(explainer, "current_tunables") else {}
    space = _fix_conditions(space, current)
    targets = _targets_tensor(targets, *_batch_of(explainer, inputs))
    sampler_object, grid, n_trials = _make_sampler(optuna, sampler, space, seed, int(n_trials))
    search = _Search(explainer, current, inputs, targets, metric, space, grid, seed, dict(metric_kwargs or {}))

    verbosity = optuna.logging.get_verbosity()
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        direction = "maximize" if metric.higher_is_better else "minimize"
        study = optuna.create_study(direction=direction, sampler=sampler_object)
        search.enqueue_current(study)
        study.optimize(search.objective, n_trials=n_trials, catch=(_NonFiniteScore,))
    finally:
        optuna.logging.set_verbosity(verbosity)
    return _result(optuna, study, explainer)
