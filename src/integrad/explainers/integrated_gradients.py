"""Integrated-gradients explainer: the core method behind the :class:`~integrad.explainers.Explainer` interface."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from .. import arguments
from ..methods import IntegratedGradients as CoreIntegratedGradients
from ..methods import LayerIntegratedGradients as CoreLayerIntegratedGradients
from ..methods import NoiseTunnel
from ..methods.noise_tunnel import copy_examples
from .base import Extractor, TensorOrTuple
from .core import BaselineExplainer
from .resolve import check_core_kwargs, check_targets, resolve_baselines, resolve_layers
from .support import Attention, Convolution, Linear

__all__ = ["IntegratedGradients", "check_targets"]

LayerSpec = str | nn.Module
BaselineSpec = str | Callable[..., torch.Tensor] | torch.Tensor | float

# Where each core keyword goes: the core constructor, its ``attribute``, or the noise tunnel around it.
_CONSTRUCTOR_KEYS = ("multiply_by_inputs",)
_ATTRIBUTE_KEYS = ("method", "internal_batch_size", "memory_budget", "tolerance")
_LAYER_ATTRIBUTE_KEYS = ("attribute_to_layer_input",)
_NOISE_KEYS = ("nt_type", "nt_samples", "nt_samples_batch_size", "noise_seed")
#: Keywords that place points by a rule, which IDGI (a sum over the points) does not take.
_RULE_KEYS = ("method", "tolerance")
_DEFAULT_NT_SAMPLES = 5


def _default_method() -> str:
    parameter = inspect.signature(CoreIntegratedGradients.attribute).parameters.get("method")
    return parameter.default if parameter is not None else "gausslegendre"


class IntegratedGradients(BaselineExplainer):
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
        ``nt_type``, ``nt_samples`` (default 5) and ``nt_samples_batch_size`` to the noise tunnel, whose noise is
        drawn from torch's global generator unless ``noise_seed`` (an int >= 0) seeds a generator of its own for
        each call: then every call with the same inputs gives the same result, also from several threads.

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

    CONSTRUCTOR_KEYS = _CONSTRUCTOR_KEYS

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
        idgi: bool = False,
        **core_kwargs: Any,
    ) -> None:
        super().__init__(model, forward_arg_extractor, additional_forward_arg_extractor)
        self.n_steps = arguments.check_n_steps(n_steps, allow_auto=True)
        self.baseline_fn = baseline_fn
        self._baseline_fns = resolve_baselines(baseline_fn)
        self.layer = layer
        self._layers, self._forward = resolve_layers(model, layer)
        self.noise_level = arguments.check_non_negative("noise_level", noise_level)
        layered = layer is not None
        accepted = _CONSTRUCTOR_KEYS + _ATTRIBUTE_KEYS + _NOISE_KEYS + (_LAYER_ATTRIBUTE_KEYS if layered else ())
        hint = " (attribute_to_layer_input needs a layer)" if "attribute_to_layer_input" in core_kwargs else ""
        self._init_core(n_classes, idgi, check_core_kwargs("IntegratedGradients", core_kwargs, accepted, hint))
        if self.idgi:
            _check_idgi(self.n_steps, layered, self.noise_level, self.core_kwargs)
        if "noise_seed" in self.core_kwargs:
            seed = self.core_kwargs["noise_seed"]
            if not arguments.is_int(seed) or not 0 <= seed < 2**63:
                raise ValueError(f"noise_seed must be an int from 0 to 2**63 - 1; got {seed!r}")
        self.ATTRIBUTE_KEYS = _ATTRIBUTE_KEYS + (_LAYER_ATTRIBUTE_KEYS if layered else ())

    # ------------------------------------------------------------------------------------------------- core

    def _core_key(self) -> tuple:
        layers = self._layers if isinstance(self._layers, list) else [self._layers] if self._layers else []
        return super()._core_key() + (tuple(id(m) for m in layers),)

    def _build_core(self) -> Any:
        """``integrad.IntegratedGradients``, or ``integrad.LayerIntegratedGradients`` with a layer."""
        constructor = {k: v for k, v in self.core_kwargs.items() if k in _CONSTRUCTOR_KEYS}
        if self._layers is None:
            return CoreIntegratedGradients(self.model, **constructor)
        return CoreLayerIntegratedGradients(self._forward, self._layers, **constructor)

    def _method_arguments(self, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], baselines: Any) -> dict:
        if baselines is None:
            baselines = self._baselines(tensors)
            baselines = baselines if isinstance(forward, tuple) else baselines[0]
        return {"baselines": baselines, "n_steps": self.n_steps}

    def _run(self, core: Any, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], kwargs: dict) -> tuple:
        if self.idgi:
            kwargs = {k: v for k, v in kwargs.items() if k not in _RULE_KEYS}
        if self.noise_level > 0:
            return self._smoothgrad(core, forward, tensors, kwargs)
        return core.attribute(forward, **kwargs)

    def _smoothgrad(
        self, method: Any, forward: TensorOrTuple, tensors: tuple[torch.Tensor, ...], kwargs: dict[str, Any]
    ) -> tuple[TensorOrTuple, torch.Tensor | None]:
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
        if "noise_seed" in self.core_kwargs:
            generator = torch.Generator(device=tensors[0].device)
            noise["generator"] = generator.manual_seed(int(self.core_kwargs["noise_seed"]))
        attributions, delta = NoiseTunnel(method).attribute(forward, **noise, **kwargs)
        n = tensors[0].shape[0]
        if torch.is_tensor(delta) and delta.numel() == n * nt_samples and nt_samples > 1:
            # One delta per noisy copy: averaged over each example's copies.
            examples = copy_examples(n, nt_samples, noise.get("nt_samples_batch_size")).to(delta.device)
            delta = torch.zeros(n, dtype=delta.dtype, device=delta.device).index_add_(0, examples, delta) / nt_samples
        return attributions, delta

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
        token ids); without a layer, ``idgi`` (IDGI's sum over the grid's points, on or off; ``method`` and
        ``noise_level`` apply only when it is off). ``baseline_fn`` is absent when it is a per-input tuple.

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
        tunables.update(self._baseline_tunables(kinds))
        if "token" not in kinds:
            tunables["noise_level"] = (float, {"low": 0.0, "high": 0.3, "step": 0.05})
        if self._layers is None:
            # IDGI sums over the grid's points: the rule and the noise tunnel apply only without it.
            tunables["idgi"] = (bool, {"choices": [False, True]})
            for name in ("method", "noise_level"):
                if name in tunables:
                    kind, space = tunables[name]
                    tunables[name] = (kind, {**space, "when": {"idgi": False}})
        return tunables

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
        if self._layers is None:
            point["idgi"] = self.idgi
        return {**point, **self._current_baseline()}


# ---------------------------------------------------------------------------------------------- validation


def _check_idgi(n_steps: Any, layered: bool, noise_level: float, core_kwargs: dict) -> None:
    """IDGI sums over the points of integrated gradients on the inputs: it needs a number of steps, no layer, no
    noise tunnel and no rule."""
    if n_steps == "auto":
        raise ValueError("idgi=True sums over the points of a fixed grid; n_steps must be an int, not 'auto'")
    if layered:
        raise ValueError("idgi=True applies to the inputs' integrated gradients; layer must be None")
    if noise_level > 0:
        raise ValueError("idgi=True cannot be combined with noise_level > 0 (a noise tunnel wraps methods, not IDGI)")
    given = sorted(set(core_kwargs) & set(_RULE_KEYS + _NOISE_KEYS))
    if given:
        raise ValueError(f"idgi=True sums over the points j/n_steps; {given} do not apply")
