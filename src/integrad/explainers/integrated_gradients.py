"""Integrated-gradients explainer: the core method behind the :class:`~integrad.explainers.Explainer` interface."""

from __future__ import annotations

import difflib
import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .. import arguments
from .base import Explainer, Extractor, TensorOrTuple
from .baselines import BASELINES, ConfiguredBaseline, baselines_for, configured_params, get_baseline_fn, input_kind
from .support import Attention, Convolution, Linear

__all__ = ["IntegratedGradients"]

LayerSpec = str | nn.Module
BaselineSpec = str | Callable[..., torch.Tensor] | torch.Tensor | float

# Where each core keyword goes: the core constructor, its ``attribute``, or the noise tunnel around it.
_CONSTRUCTOR_KEYS = ("multiply_by_inputs",)
_ATTRIBUTE_KEYS = ("method", "internal_batch_size", "memory_budget", "tolerance")
_LAYER_ATTRIBUTE_KEYS = ("attribute_to_layer_input",)
_NOISE_KEYS = ("nt_type", "nt_samples", "nt_samples_batch_size")
_DEFAULT_NT_SAMPLES = 5


def _default_method() -> str:
    import inspect

    import integrad

    parameter = inspect.signature(integrad.IntegratedGradients.attribute).parameters.get("method")
    return parameter.default if parameter is not None else "gausslegendre"


class IntegratedGradients(Explainer):
    r"""Integrated gradients (Sundararajan et al., 2017) as an :class:`Explainer`.

    For an attributed input ``x``, baseline ``x′`` and output ``F`` at the target,

    .. math:: \mathrm{IG}_i(x) = (x_i - x'_i) \int_0^1 \partial_i F(x' + \alpha (x - x'))\, d\alpha ,

    computed by :class:`integrad.IntegratedGradients` (or :class:`integrad.LayerIntegratedGradients` when
    ``layer`` is given, with ``x`` the layer's activations). Attributions add up to ``F(x) − F(x′)``; the gap,
    :attr:`last_delta`, measures the quadrature error.

    The explainer does not call ``model.eval()``. Whether dropout is active and which statistics batch norm uses
    are the caller's choice, and the model is shared with the caller's code, so switching its mode here would
    change their model behind their back. Put the model in eval mode before explaining it when that is what you
    want (it usually is: attributions of a model with active dropout are random).

    Parameters
    ----------
    model : torch.nn.Module
        Called as ``model(*attributed_inputs, *additional_args)``; returns ``(N, K)`` scores or ``(N,)`` scalars.
    n_steps : int or "auto"
        Path points per example; ``"auto"`` lets the core pick them to meet ``tolerance``.
    baseline_fn : str, callable, tensor, or tuple of these
        How the baseline is built from the attributed inputs: a name from
        :data:`integrad.explainers.baselines.BASELINES`, a callable ``fn(inputs) -> Tensor`` (e.g.
        ``token(103)``), or a tensor/number used as is. A tuple gives one per attributed input.
    layer : str, nn.Module, or a list of these, optional
        ``None`` attributes to the inputs. Otherwise the layer(s) whose activations are attributed — modules of
        ``model`` or dotted names resolved with ``model.get_submodule`` (``"bert.embeddings"``).
    n_classes : int, optional
        Number of output classes; when given, targets outside ``[0, n_classes)`` are rejected before the model
        runs.
    forward_arg_extractor, additional_forward_arg_extractor : callable, optional
        Read batches; see :class:`Explainer`.
    noise_level : float
        ``0`` (off) or the SmoothGrad noise level: the method is wrapped in :class:`integrad.NoiseTunnel`
        (``nt_type="smoothgrad"`` unless set) with, for each attributed input, ``stdevs = noise_level × (max − min)``
        of that input over the batch — the range, not the standard deviation, as Smilkov et al. scale it (they
        recommend 10–20 %). Needs floating-point attributed inputs.
    **core_kwargs
        Passed to the core: ``multiply_by_inputs`` to its constructor; ``method``, ``internal_batch_size``,
        ``memory_budget``, ``tolerance`` (and ``attribute_to_layer_input`` with a layer) to its ``attribute``;
        ``nt_type``, ``nt_samples`` (default 5) and ``nt_samples_batch_size`` to the noise tunnel.

    Attributes
    ----------
    last_delta : torch.Tensor or None
        Convergence delta ``Σ attributions − (F(x) − F(x′))`` per example of the last :meth:`attribute` call
        (averaged over noise samples when ``noise_level > 0``).
    last_report : integrad.IntegrationReport or None
        The core's report of the last call (steps used, rows evaluated, error estimate).

    References
    ----------
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017.
    Smilkov, Thorat, Kim, Viégas, Wattenberg. SmoothGrad: removing noise by adding noise. 2017.
    """

    SUPPORTED_MODULES = [Linear, Convolution, Attention]

    def __init__(
        self,
        model: nn.Module,
        n_steps: int | str = 20,
        baseline_fn: BaselineSpec | tuple[BaselineSpec, ...] = "zeros",
        layer: LayerSpec | Sequence[LayerSpec] | None = None,
        n_classes: int | None = None,
        forward_arg_extractor: Extractor | None = None,
        additional_forward_arg_extractor: Extractor | None = None,
        noise_level: float = 0.0,
        **core_kwargs: Any,
    ) -> None:
        super().__init__(model, forward_arg_extractor, additional_forward_arg_extractor)
        self.n_steps = arguments.check_n_steps(n_steps, allow_auto=True)
        self.baseline_fn = baseline_fn
        self._baseline_fns = _resolve_baselines(baseline_fn)
        self.layer = layer
        self._layers, self._forward = _resolve_layers(model, layer)
        self.n_classes = arguments.check_positive_int("n_classes", n_classes)
        self.noise_level = arguments.check_non_negative("noise_level", noise_level)
        self.core_kwargs = _check_core_kwargs(core_kwargs, layered=layer is not None)
        self.last_delta: torch.Tensor | None = None
        self.last_report: Any = None
        self._core: tuple[Any, Any] | None = None

    # ------------------------------------------------------------------------------------------------- core

    @property
    def core(self):
        """The core method configured like this explainer (``integrad.IntegratedGradients`` or
        ``integrad.LayerIntegratedGradients``). The same object serves every call while the model, layers and
        constructor settings stay the same, so what it learns about chunk sizes carries over from batch to batch."""
        import integrad

        constructor = {k: v for k, v in self.core_kwargs.items() if k in _CONSTRUCTOR_KEYS}
        layers = self._layers if isinstance(self._layers, list) else [self._layers] if self._layers else []
        key = (id(self.model), tuple(id(m) for m in layers), repr(sorted(constructor.items())))
        cached = self._core
        if cached is None or cached[0] != key:
            if self._layers is None:
                method = integrad.IntegratedGradients(self.model, **constructor)
            else:
                method = integrad.LayerIntegratedGradients(self._forward, self._layers, **constructor)
            self._core = cached = (key, method)
        return cached[1]

    @property
    def explainer(self):
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

    def attribute(
        self, inputs: Any, targets: torch.Tensor | int | Sequence[int] | None = None, *, baselines: Any = None
    ) -> TensorOrTuple:
        """Integrated gradients of the batch ``inputs`` at ``targets``.

        Parameters
        ----------
        inputs : torch.Tensor or tuple
            A batch; ``forward_arg_extractor`` picks the attributed tensors (default: all of it) and
            ``additional_forward_arg_extractor`` the arguments passed along (default: none).
        targets : torch.LongTensor of shape (N,), int, sequence of int, or None
            Output index per example; ``None`` when the model returns one value per example.
        baselines : tensor, number or tuple, optional
            This batch's baselines, in any form :meth:`integrad.IntegratedGradients.attribute` takes, instead of
            those ``baseline_fn`` builds (e.g. baselines drawn with a seed per batch).

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            What the core returns: attributions shaped like the attributed inputs, or like the layer's
            activations (a list for a list of layers).
        """
        forward, additional = self._extract_args(inputs)
        tensors, _ = arguments.normalize_inputs(forward, need_grad=False)
        target = check_targets(targets, tensors[0].shape[0], self.n_classes)
        if baselines is None:
            baselines = self._baselines(tensors)
            baselines = baselines if isinstance(forward, tuple) else baselines[0]

        method = self.core
        kwargs: dict[str, Any] = {
            k: v for k, v in self.core_kwargs.items() if k in _ATTRIBUTE_KEYS + _LAYER_ATTRIBUTE_KEYS
        }
        kwargs.update(
            baselines=baselines,
            target=target,
            additional_forward_args=additional,
            n_steps=self.n_steps,
            return_convergence_delta=True,
        )
        if self.noise_level > 0:
            attributions, delta = self._smoothgrad(method, forward, tensors, kwargs)
        else:
            attributions, delta = method.attribute(forward, **kwargs)
        self.last_delta = delta.detach() if torch.is_tensor(delta) else delta
        self.last_report = getattr(method, "last_report", None)
        return attributions

    def _smoothgrad(
        self, method: Any, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], kwargs: dict[str, Any]
    ) -> tuple[TensorOrTuple, torch.Tensor | None]:
        import integrad
        from integrad.methods.noise_tunnel import copy_examples

        if any(not t.is_floating_point() for t in tensors):
            raise ValueError(
                "noise_level > 0 adds Gaussian noise to the attributed inputs, which needs floating-point inputs; "
                f"got dtype(s) {[str(t.dtype) for t in tensors]}. Use noise_level=0 for token ids."
            )
        stdevs = tuple(self.noise_level * float(t.detach().amax() - t.detach().amin()) for t in tensors)
        nt_samples = self.core_kwargs.get("nt_samples", _DEFAULT_NT_SAMPLES)
        noise = {
            "nt_type": self.core_kwargs.get("nt_type", "smoothgrad"),
            "nt_samples": nt_samples,
            "stdevs": stdevs if isinstance(forward, tuple) else stdevs[0],
        }
        if "nt_samples_batch_size" in self.core_kwargs:
            noise["nt_samples_batch_size"] = self.core_kwargs["nt_samples_batch_size"]
        attributions, delta = integrad.NoiseTunnel(method).attribute(forward, **noise, **kwargs)
        n = tensors[0].shape[0]
        if torch.is_tensor(delta) and delta.numel() == n * nt_samples and nt_samples > 1:
            # One delta per noisy copy: averaged over each example's copies.
            examples = copy_examples(n, nt_samples, noise.get("nt_samples_batch_size")).to(delta.device)
            delta = torch.zeros(n, dtype=delta.dtype, device=delta.device).index_add_(0, examples, delta) / nt_samples
        return attributions, delta

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

    # ----------------------------------------------------------------------------------------------- tuning

    def get_tunables(self, inputs: Any = None) -> dict[str, tuple[type, dict[str, Any]]]:
        """Search space: ``{name: (type, space)}``.

        Format: ``type`` is ``int`` or ``float`` with ``space = {"low", "high"}`` (bounds included) and optional
        ``"step"`` and ``"log"``, or ``str`` with ``space = {"choices": [...]}``. A space with
        ``"when": {"baseline_fn": name}`` belongs to that baseline and exists only when it is chosen; such keys
        read ``"baseline_fn.<name>.<parameter>"``. :meth:`apply_tunables` turns a point of the space into an
        explainer.

        Entries: ``n_steps`` (int, 10–100 by 10); ``method`` (the five quadrature rules); ``baseline_fn`` (the
        built-in baselines that fit every attributed input: ``zeros``/``token`` for token ids, the image
        baselines only for 4-D floating inputs, see :func:`~integrad.explainers.baselines.baselines_for`) and
        each chosen baseline's own parameters; ``noise_level`` (float 0–0.3 by 0.05, 0 meaning off; absent for
        token ids). ``baseline_fn`` is absent when it is a per-input tuple.

        Parameters
        ----------
        inputs : optional
            A batch like :meth:`attribute` takes; the kinds of its attributed tensors decide the baselines.
            Without it they are guessed from the model: token ids when the layer is or contains an
            ``nn.Embedding``, else from the model's first ``Embedding``/``Conv``/``Linear`` module.
        """
        kinds = self._input_kinds(inputs)
        tunables: dict[str, tuple[type, dict[str, Any]]] = {
            "n_steps": (int, {"low": 10, "high": 100, "step": 10}),
            "method": (str, {"choices": list(arguments.METHOD_NAMES)}),
        }
        if not isinstance(self.baseline_fn, tuple):
            names = [name for name in BASELINES if all(name in baselines_for(kind) for kind in kinds)]
            tunables["baseline_fn"] = (str, {"choices": names})
            for name in names:
                for parameter, (kind, space) in BASELINES[name].TUNABLES.items():
                    tunables[f"baseline_fn.{name}.{parameter}"] = (kind, {**space, "when": {"baseline_fn": name}})
        if "token" not in kinds:
            tunables["noise_level"] = (float, {"low": 0.0, "high": 0.3, "step": 0.05})
        return tunables

    def apply_tunables(self, params: dict[str, Any]) -> IntegratedGradients:
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

    def current_tunables(self) -> dict[str, Any]:
        """This explainer's configuration as a point of :meth:`get_tunables`'s space.

        ``method`` is the core's default when not set; the baseline appears by name with its parameters under
        ``"baseline_fn.<name>.<parameter>"`` (the ones it was given, and the defaults of its tunable ones, e.g.
        ``sigma=1.0`` for ``"gaussian_blur"``); a custom callable baseline has no name in the space and is left
        out.
        """
        point: dict[str, Any] = {
            "n_steps": self.n_steps,
            "noise_level": self.noise_level,
            "method": self.core_kwargs.get("method", _default_method()),
        }
        spec = self.baseline_fn
        if isinstance(spec, str):
            spec = get_baseline_fn(spec)
        if isinstance(spec, ConfiguredBaseline) and spec.name in BASELINES:
            point["baseline_fn"] = spec.name
            for parameter, value in configured_params(spec).items():
                point[f"baseline_fn.{spec.name}.{parameter}"] = value
        return point

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


# ---------------------------------------------------------------------------------------------- validation


def _check_core_kwargs(core_kwargs: dict[str, Any], layered: bool) -> dict[str, Any]:
    accepted = _CONSTRUCTOR_KEYS + _ATTRIBUTE_KEYS + _NOISE_KEYS + (_LAYER_ATTRIBUTE_KEYS if layered else ())
    unknown = sorted(set(core_kwargs) - set(accepted))
    if unknown:
        hint = " (attribute_to_layer_input needs a layer)" if "attribute_to_layer_input" in unknown else ""
        raise TypeError(
            f"IntegratedGradients got unexpected keyword argument(s) {unknown}{hint}; "
            f"accepted core keywords are {sorted(accepted)}"
        )
    if "method" in core_kwargs:
        arguments.check_method(core_kwargs["method"])
    if "nt_type" in core_kwargs:
        arguments.check_nt_type(core_kwargs["nt_type"])
    arguments.check_positive_int("nt_samples", core_kwargs.get("nt_samples", _DEFAULT_NT_SAMPLES), allow_none=False)
    return dict(core_kwargs)


def _resolve_baselines(baseline_fn: Any) -> tuple[Any, ...]:
    specs = baseline_fn if isinstance(baseline_fn, tuple) else (baseline_fn,)
    if not specs:
        raise ValueError("baseline_fn must not be an empty tuple; give one baseline per attributed input")
    resolved = []
    for spec in specs:
        if torch.is_tensor(spec) or (isinstance(spec, numbers.Number) and not isinstance(spec, bool)):
            resolved.append(spec)
        elif isinstance(spec, str) or callable(spec):
            resolved.append(get_baseline_fn(spec))
        else:
            raise TypeError(
                f"baseline_fn must be a name from {sorted(BASELINES)}, a callable fn(inputs) -> Tensor, a tensor, "
                f"a number, or a tuple of these (one per attributed input); got {type(spec).__name__}"
            )
    return tuple(resolved)


def _resolve_layers(model: Any, layer: Any) -> tuple[nn.Module | list[nn.Module] | None, Any]:
    """The layer module(s), and the function the layer method runs: the model, or the model with the forward
    arguments named in ``layer`` passed through identity modules (see :class:`ArgumentLayers`)."""
    if layer is None:
        return None, model
    items = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    if not items:
        raise ValueError("layer must be None, a module, a dotted name, or a non-empty list of these; got []")
    named_arguments = [item for item in items if isinstance(item, str) and _is_argument(model, item)]
    forward = ArgumentLayers(model, named_arguments) if named_arguments else model
    resolved = [forward.arguments[item] if item in named_arguments else _resolve_layer(model, item) for item in items]
    return (resolved if isinstance(layer, (list, tuple)) else resolved[0]), forward


def _is_argument(model: Any, name: str) -> bool:
    """Whether ``name`` is a parameter of ``model.forward`` and not a submodule (a submodule's name wins)."""
    if not isinstance(model, nn.Module):
        return False
    try:
        model.get_submodule(name)
        return False
    except AttributeError:
        pass
    return name in inspect.signature(model.forward).parameters


class _Argument(nn.Module):
    """Identity: its output is the forward argument it stands for."""

    def forward(self, value: Any) -> Any:
        return value


class ArgumentLayers(nn.Module):
    """A model whose chosen forward arguments pass through identity modules first.

    A layer method given such a module attributes to the argument itself, by name: ``layer=["input_ids"]`` (pnpxai's
    meaning of a layer given as a forward argument's name). The wrapped model runs unchanged.

    Parameters
    ----------
    model : torch.nn.Module
        The model, called with the arguments bound to its ``forward``'s parameters.
    names : list of str
        The parameters of ``model.forward`` to expose; ``arguments[name]`` is the module standing for each.
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        super().__init__()
        self.model = model
        self.arguments = nn.ModuleDict({name: _Argument() for name in names})
        self._signature = inspect.signature(model.forward)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(*args, **kwargs)
        for name, module in self.arguments.items():
            if name in bound.arguments:
                bound.arguments[name] = module(bound.arguments[name])
        return self.model(*bound.args, **bound.kwargs)


def _resolve_layer(model: Any, layer: Any) -> nn.Module:
    if isinstance(layer, str):
        if not isinstance(model, nn.Module):
            raise TypeError(f"layer given by name ({layer!r}) needs model to be an nn.Module")
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name]
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.6)
            if not close:
                close = [name for name in names if "." not in name][:10]
                hint = f"top-level modules are {close}"
            else:
                hint = f"did you mean {close}?"
            arguments = list(inspect.signature(model.forward).parameters)
            raise ValueError(
                f"layer {layer!r} is neither a submodule of {type(model).__name__} nor an argument of its forward "
                f"({arguments}); {hint}"
            ) from None
    if isinstance(layer, nn.Module):
        if isinstance(model, nn.Module) and not any(layer is module for module in model.modules()):
            raise ValueError(
                f"layer {type(layer).__name__} is not a submodule of {type(model).__name__}; its activations would "
                "never be computed. Pass a module of the model or its dotted name"
            )
        return layer
    raise TypeError(
        "layer must be None, an nn.Module, a dotted module name or a forward argument's name (str), or a list of "
        f"these; got {type(layer).__name__}"
    )


def check_targets(targets: Any, n: int, n_classes: int | None) -> Any:
    """Targets for ``n`` examples as the explainer takes them (None, an int, or an integer tensor of shape (N,),
    (1,) or ()), with sequences of ints made tensors; TypeError/ValueError naming ``targets`` otherwise."""
    if targets is None:
        return None
    if isinstance(targets, bool):
        raise TypeError("targets must be a LongTensor of shape (N,), an int, a sequence of ints, or None; got a bool")
    if arguments.is_int(targets):
        values = torch.tensor([int(targets)])
        result: Any = int(targets)
    else:
        if isinstance(targets, (list, tuple)):
            if not all(arguments.is_int(t) for t in targets):
                raise TypeError("targets must hold ints, one per example, when given as a sequence")
            targets = torch.tensor(list(targets), dtype=torch.long)
        if not torch.is_tensor(targets):
            raise TypeError(
                f"targets must be a LongTensor of shape (N,), an int, a sequence of ints, or None; "
                f"got {type(targets).__name__}"
            )
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(f"targets must hold integer class indices, got dtype {targets.dtype}")
        if targets.dim() > 1 or (targets.dim() == 1 and targets.numel() not in (1, n)):
            raise ValueError(f"targets must have shape (N,) = ({n},) or be a scalar, got {tuple(targets.shape)}")
        values = targets.reshape(-1)
        result = targets
    if n_classes is not None and values.numel() and (int(values.min()) < 0 or int(values.max()) >= n_classes):
        raise ValueError(
            f"targets must lie in [0, n_classes) = [0, {n_classes}), got values in "
            f"[{int(values.min())}, {int(values.max())}]"
        )
    return result
