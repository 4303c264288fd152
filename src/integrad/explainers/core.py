"""An explainer around one core method of :mod:`integrad`: the one façade that resolves layers, targets and
baselines, and keeps the core across batches."""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn as nn

from .. import arguments
from ..methods.base import LatestPerThread
from ..methods.idgi import IDGI
from .base import Explainer, TensorOrTuple
from .baselines import BASELINES, ConfiguredBaseline, baselines_for, configured_params, get_baseline_fn, input_kind
from .resolve import check_targets


class CoreExplainer(Explainer):
    """Base of the explainers that run a method of :mod:`integrad` on every batch.

    A subclass says which core it builds (:meth:`_build_core`) and which of the core's ``attribute`` arguments its
    configuration sets (:meth:`_method_arguments`); this class does the rest, the same way for every method: it
    reads the batch with the extractors, checks the targets against ``n_classes``, runs the core with
    ``return_convergence_delta``, and records :attr:`last_delta` and :attr:`last_report` for the calling thread.
    The core is built once per configuration and serves every batch (and every thread), so what it learns about
    chunk sizes carries over. With ``idgi`` the core is wrapped in :class:`integrad.IDGI`.
    """

    #: The core's keyword arguments for its constructor, and for its ``attribute``, that ``**core_kwargs`` may set.
    CONSTRUCTOR_KEYS: tuple[str, ...] = ()
    ATTRIBUTE_KEYS: tuple[str, ...] = ("internal_batch_size", "memory_budget")

    #: Convergence delta ``Σ attributions − (F(x) − F(x′))`` per example of the calling thread's last call.
    last_delta = LatestPerThread()
    #: The core's report of the calling thread's last call (steps used, rows evaluated, error estimate).
    last_report = LatestPerThread()

    def _init_core(self, n_classes: Any, idgi: Any, core_kwargs: dict[str, Any]) -> None:
        self.n_classes = arguments.check_positive_int("n_classes", n_classes)
        self.idgi = arguments.check_bool("idgi", idgi)
        self.core_kwargs = core_kwargs
        self._core: tuple[Any, Any] | None = None
        self._core_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------- core

    def _build_core(self) -> Any:
        """A new core method configured like this explainer (without IDGI)."""
        raise NotImplementedError

    def _core_key(self) -> tuple:
        """What the core depends on: a new one is built when it changes."""
        constructor = {k: v for k, v in self.core_kwargs.items() if k in self.CONSTRUCTOR_KEYS}
        return (id(self.model), repr(sorted(constructor.items())), self.idgi)

    @property
    def core(self) -> Any:
        """The core method configured like this explainer: the same object serves every call while the model and
        the constructor settings stay the same."""
        key = self._core_key()
        with self._core_lock:
            if self._core is None or self._core[0] != key:
                method = self._build_core()
                self._core = (key, IDGI(method) if self.idgi else method)
            return self._core[1]

    @property
    def explainer(self) -> Any:
        """:attr:`core`, under the name pnpxai gives it."""
        return self.core

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter or buffer (the CPU for a model without either)."""
        if isinstance(self.model, nn.Module):
            for tensor in self.model.parameters():
                return tensor.device
            for tensor in self.model.buffers():
                return tensor.device
        return torch.device("cpu")

    # ----------------------------------------------------------------------------------------------- attribute

    def _method_arguments(self, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], baselines: Any) -> dict:
        """The core's ``attribute`` arguments this explainer's configuration sets, for a batch (its baselines
        among them, where the method takes baselines)."""
        return {}

    def attribute(self, inputs: Any, targets: Any = None, *, baselines: Any = None) -> TensorOrTuple:
        """Attributions of the batch ``inputs`` at ``targets``.

        Parameters
        ----------
        inputs : torch.Tensor or tuple
            A batch; ``forward_arg_extractor`` picks the attributed tensors (default: all of it) and
            ``additional_forward_arg_extractor`` the arguments passed along (default: none).
        targets : torch.LongTensor of shape (N,), int, sequence of int, or None
            Output index per example; ``None`` when the model returns one value per example.
        baselines : tensor, number or tuple, optional
            This batch's baselines, in any form the core method takes, instead of those ``baseline_fn`` builds
            (e.g. baselines drawn with a seed per batch). For methods with baselines only.

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            What the core returns: attributions shaped like the attributed inputs (or like a layer's value).
        """
        forward, additional = self._extract_args(inputs)
        tensors, _ = arguments.normalize_inputs(forward, need_grad=False)
        target = check_targets(targets, tensors[0].shape[0], self.n_classes)
        kwargs = {k: v for k, v in self.core_kwargs.items() if k in self.ATTRIBUTE_KEYS}
        kwargs.update(self._method_arguments(forward, tensors, baselines))
        kwargs.update(target=target, additional_forward_args=additional, return_convergence_delta=True)
        attributions, delta = self._run(self.core, forward, tensors, kwargs)
        self.last_delta = delta.detach() if torch.is_tensor(delta) else delta
        self.last_report = getattr(self.core, "last_report", None)
        return attributions

    def _run(self, core: Any, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], kwargs: dict) -> tuple:
        return core.attribute(forward, **kwargs)


class BaselineExplainer(CoreExplainer):
    """A core explainer whose method starts from baselines built by ``baseline_fn``: a name from
    :data:`integrad.explainers.baselines.BASELINES`, a callable ``fn(inputs) -> Tensor``, a tensor or number, or a
    tuple of these (one per attributed input). Subclasses set ``self.baseline_fn`` and
    ``self._baseline_fns = resolve_baselines(baseline_fn)`` (and ``self._layers`` when they attribute to layers).

    Its tunables include the baseline (the built-in baselines that fit every attributed input) with each chosen
    baseline's own parameters, under ``"baseline_fn.<name>.<parameter>"``.
    """

    _layers: Any = None

    def _baseline_tunables(self, kinds: tuple[str, ...]) -> dict[str, tuple[type, dict[str, Any]]]:
        """``baseline_fn`` among the baselines that fit every input kind, and each one's own parameters (absent when
        ``baseline_fn`` is a per-input tuple)."""
        if isinstance(self.baseline_fn, tuple):
            return {}
        names = [name for name in BASELINES if all(name in baselines_for(kind) for kind in kinds)]
        tunables: dict[str, tuple[type, dict[str, Any]]] = {"baseline_fn": (str, {"choices": names})}
        for name in names:
            for parameter, (kind, space) in BASELINES[name].TUNABLES.items():
                tunables[f"baseline_fn.{name}.{parameter}"] = (kind, {**space, "when": {"baseline_fn": name}})
        return tunables

    def _current_baseline(self) -> dict[str, Any]:
        """The baseline by name with its parameters (given, and the defaults of its tunable ones); a custom callable
        has no name in the space and is left out."""
        spec = self.baseline_fn
        if isinstance(spec, str):
            spec = get_baseline_fn(spec)
        if not (isinstance(spec, ConfiguredBaseline) and spec.name in BASELINES):
            return {}
        point: dict[str, Any] = {"baseline_fn": spec.name}
        for parameter, value in configured_params(spec).items():
            point[f"baseline_fn.{spec.name}.{parameter}"] = value
        return point

    def _baselines(self, tensors: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
        fns = self._baseline_fns
        if len(fns) == 1:
            fns = fns * len(tensors)
        elif len(fns) != len(tensors):
            raise ValueError(
                f"baseline_fn is a tuple of {len(fns)} but {len(tensors)} input(s) are attributed; "
                "give one baseline per attributed input, or a single one for all"
            )
        baselines = []
        for fn, tensor in zip(fns, tensors):
            if callable(fn):
                with torch.no_grad():
                    baselines.append(fn(tensor.detach()))
            else:
                baselines.append(fn)
        return tuple(baselines)

    def apply_tunables(self, params: dict[str, Any]) -> BaselineExplainer:
        """A copy configured at a point of :meth:`get_tunables`'s space, e.g. from a tuner's trial.

        ``{"baseline_fn": "gaussian_blur", "baseline_fn.gaussian_blur.sigma": 2.0, "n_steps": 30}`` becomes
        ``set_kwargs(baseline_fn=get_baseline_fn("gaussian_blur", sigma=2.0), n_steps=30)``; parameters of the
        baselines not chosen are ignored. When the chosen baseline is the one already configured (say
        ``token(103)``), its parameters are kept unless overridden. Without ``"baseline_fn"``, a baseline's
        parameter applies to this explainer's own baseline: ``{"baseline_fn.gaussian_blur.sigma": 3.0}``
        re-configures a ``gaussian_blur`` baseline with ``sigma=3.0``.

        ``"baseline_fn"`` may also be a baseline made by :func:`get_baseline_fn`, whose own parameters then apply.

        Raises
        ------
        ValueError
            A ``"baseline_fn.<name>.<parameter>"`` key without ``"baseline_fn"`` while this explainer's baseline is
            not ``<name>``, or with ``"baseline_fn"`` given as a callable, tensor or tuple (which have no named
            parameters), or a ``"baseline_fn."`` key of another form.
        """
        kwargs: dict[str, Any] = {}
        baseline_params: dict[str, dict[str, Any]] = {}
        first_key: dict[str, str] = {}
        for key, value in params.items():
            if key.startswith("baseline_fn."):
                parts = key.split(".", 2)
                if len(parts) != 3 or not parts[1] or not parts[2]:
                    raise ValueError(
                        f"tunable {key!r} is not a baseline parameter; those read 'baseline_fn.<name>.<parameter>'"
                    )
                baseline_params.setdefault(parts[1], {})[parts[2]] = value
                first_key.setdefault(parts[1], key)
            else:
                kwargs[key] = value
        current = self.baseline_fn
        if isinstance(current, str):
            current = get_baseline_fn(current)
        own = current.name if isinstance(current, ConfiguredBaseline) else None
        name = kwargs.get("baseline_fn")
        if isinstance(name, str):
            name = name.strip().lower()
            chosen = baseline_params.get(name, {})
            if own == name:
                kwargs["baseline_fn"] = get_baseline_fn(current, **chosen)
            else:
                kwargs["baseline_fn"] = get_baseline_fn(name, **chosen)
        elif isinstance(name, ConfiguredBaseline):
            kwargs["baseline_fn"] = get_baseline_fn(name, **baseline_params.get(name.name, {}))
        elif "baseline_fn" in kwargs and baseline_params:
            raise ValueError(
                f"tunable {next(iter(first_key.values()))!r} sets a parameter of a named baseline, but 'baseline_fn' "
                f"is given as {type(name).__name__}, which has no such parameters; give 'baseline_fn' as a name "
                "(e.g. 'gaussian_blur') or as get_baseline_fn(name, ...)"
            )
        elif "baseline_fn" not in kwargs and baseline_params:
            for baseline, key in first_key.items():
                if baseline != own:
                    raise ValueError(
                        f"tunable {key!r} sets a parameter of the {baseline!r} baseline, but this explainer's "
                        f"baseline_fn is {self.baseline_fn!r}; give 'baseline_fn': {baseline!r} with it to switch "
                        "to that baseline"
                    )
            kwargs["baseline_fn"] = get_baseline_fn(current, **baseline_params[own])
        return self.set_kwargs(**kwargs)

    def _input_kinds(self, inputs: Any) -> tuple[str, ...]:
        if inputs is not None:
            forward, _ = self._extract_args(inputs)
            tensors = forward if isinstance(forward, tuple) else (forward,)
            return tuple(sorted({input_kind(t) for t in tensors}))
        layers = self._layers if isinstance(self._layers, list) else [self._layers] if self._layers else []
        if any(isinstance(m, nn.Embedding) for layer in layers for m in layer.modules()):
            return ("token",)
        if isinstance(self.model, nn.Module):
            for module in self.model.modules():
                if isinstance(module, nn.Embedding):
                    return ("token",)
                if isinstance(module, nn.Conv2d):
                    return ("image",)
                if isinstance(module, nn.Conv1d):
                    return ("sequence",)
                if isinstance(module, (nn.Conv3d, nn.Linear)):
                    return ("other",) if isinstance(module, nn.Conv3d) else ("tabular",)
        return ("other",)
