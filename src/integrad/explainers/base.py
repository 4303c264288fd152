"""The :class:`Explainer` base: a model, a way to read batches, and a tunable configuration."""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["Explainer", "TensorOrTuple"]

TensorOrTuple = torch.Tensor | tuple[torch.Tensor, ...]
Extractor = Callable[[Any], Any]


class Explainer(abc.ABC):
    """Base of the explainers: attributes a model's outputs to its inputs, batch by batch.

    An explainer holds a model and its configuration. Its configuration is the constructor's parameters, read back
    by :meth:`get_params`; :meth:`set_kwargs` returns a copy with some of them changed, which is how tuners try
    configurations without touching the original. The model is never copied, put in eval mode, or otherwise
    modified.

    Batches may be a tensor or a tuple such as ``(x, mask, label)``. Two extractors say how to read them:
    ``forward_arg_extractor(batch)`` returns what is attributed (default: the tensor itself, or the whole tuple),
    ``additional_forward_arg_extractor(batch)`` returns what is passed to the model after the attributed inputs
    but not attributed (default: nothing). The model is called as ``model(*attributed, *additional)``.

    Parameters
    ----------
    model : torch.nn.Module
        The model to explain. Shared, never copied.
    forward_arg_extractor : callable, optional
        ``batch -> Tensor | tuple of Tensor``: the inputs to attribute.
    additional_forward_arg_extractor : callable, optional
        ``batch -> Tensor | tuple | None``: further model arguments, not attributed.

    Attributes
    ----------
    EXPLANATION_TYPE : str
        What :meth:`attribute` returns; ``"attribution"``: one score per input element.
    SUPPORTED_MODULES : list
        Module categories (see :mod:`integrad.explainers.support`) the explainer is known to handle.
    TUNABLES : dict
        Tunable parameters fixed for the class (none: an explainer's search space depends on its configuration and
        inputs, see ``get_tunables``).
    """

    EXPLANATION_TYPE: str = "attribution"
    SUPPORTED_MODULES: list[Any] = []
    TUNABLES: dict[str, Any] = {}

    def __init__(
        self,
        model: nn.Module,
        forward_arg_extractor: Extractor | None = None,
        additional_forward_arg_extractor: Extractor | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
        for name, extractor in (
            ("forward_arg_extractor", forward_arg_extractor),
            ("additional_forward_arg_extractor", additional_forward_arg_extractor),
        ):
            if extractor is not None and not callable(extractor):
                raise TypeError(f"{name} must be a callable batch -> tensors or None, got {type(extractor).__name__}")
        self.model = model
        self.forward_arg_extractor = forward_arg_extractor
        self.additional_forward_arg_extractor = additional_forward_arg_extractor

    # ------------------------------------------------------------------------------------------------ interface

    @abc.abstractmethod
    def attribute(self, inputs: Any, targets: torch.Tensor | int | None = None) -> TensorOrTuple:
        """Attribute the model's output at ``targets`` to the inputs of a batch.

        Parameters
        ----------
        inputs : torch.Tensor or tuple
            A batch, read with the extractors.
        targets : torch.LongTensor of shape (N,), int or None
            Output index per example; ``None`` for models with one output per example.

        Returns
        -------
        torch.Tensor or tuple of torch.Tensor
            Attributions shaped like the attributed inputs.
        """

    def get_tunables(self, inputs: Any = None) -> dict[str, tuple[type, dict[str, Any]]]:
        """Search space of the explainer's parameters: ``{name: (type, space)}``.

        ``type`` is ``int``, ``float`` (a range; ``space = {"low", "high"}`` plus optional ``"step"`` and
        ``"log"``) or ``str`` (a category; ``space = {"choices": [...]}``). A space may carry
        ``"when": {other_name: value}``: the parameter exists only when ``other_name`` takes ``value`` (e.g. a
        baseline's own parameter). The base explainer has none.
        """
        return {}

    def current_tunables(self) -> dict[str, Any]:
        """The explainer's own configuration as a point of the tunables' space (the plain-valued parameters)."""
        return {name: value for name, value in self.get_params().items() if isinstance(value, (bool, int, float, str))}

    def apply_tunables(self, params: dict[str, Any]) -> Explainer:
        """A copy configured at a point ``{name: value}`` of :meth:`get_tunables`'s space (a tuner's trial).

        The base implementation is ``set_kwargs(**params)``; explainers whose space has dependent entries
        (``"when"``) override it to assemble them.
        """
        return self.set_kwargs(**params)

    # ------------------------------------------------------------------------------------------- configuration

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters as currently set, except ``model``.

        ``type(e)(e.model, **e.get_params())`` builds an equivalent explainer.
        """
        params: dict[str, Any] = {}
        for parameter in list(inspect.signature(type(self).__init__).parameters.values())[1:]:
            if parameter.name == "model":
                continue
            if parameter.kind is parameter.VAR_KEYWORD:
                params.update(getattr(self, parameter.name, {}) or {})
            elif parameter.kind is not parameter.VAR_POSITIONAL:
                params[parameter.name] = getattr(self, parameter.name)
        return params

    def set_kwargs(self, **kwargs: Any) -> Explainer:
        """A copy of the explainer with some constructor parameters changed; ``self`` is left as it was.

        The copy is built by the constructor, so it validates the new values like any explainer; it shares the
        model with ``self``.

        Raises
        ------
        TypeError
            A name that is not a constructor parameter (the message lists the accepted ones).
        """
        signature = inspect.signature(type(self).__init__)
        named = [
            p.name
            for p in list(signature.parameters.values())[1:]
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "model"
        ]
        open_ended = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        unknown = sorted(set(kwargs) - set(named))
        if "model" in kwargs:
            raise TypeError("set_kwargs cannot change the model; build a new explainer for another model")
        if unknown and not open_ended:
            raise TypeError(f"{type(self).__name__}.set_kwargs got unknown parameter(s) {unknown}; accepted: {named}")
        return type(self)(self.model, **{**self.get_params(), **kwargs})

    def __repr__(self) -> str:
        def show(value: Any) -> str:
            if inspect.isfunction(value) or inspect.ismethod(value):
                return getattr(value, "__qualname__", value.__name__)
            if isinstance(value, nn.Module):
                return type(value).__name__
            return repr(value)

        args = ", ".join(f"{name}={show(value)}" for name, value in self.get_params().items() if value is not None)
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------------------------------------- helpers

    def _extract_args(self, batch: Any) -> tuple[TensorOrTuple, tuple[Any, ...] | None]:
        """Apply the extractors to ``batch``: ``(attributed inputs, additional args or None)``.

        The attributed inputs are a tensor or a tuple of tensors (lists become tuples); additional arguments are
        returned as a tuple, or ``None`` when there are none.
        """
        if self.forward_arg_extractor is None:
            forward = batch
        else:
            forward = self.forward_arg_extractor(batch)
        if isinstance(forward, list):
            forward = tuple(forward)
        tensors = forward if isinstance(forward, tuple) else (forward,)
        if not tensors or not all(torch.is_tensor(t) for t in tensors):
            source = "forward_arg_extractor(batch)" if self.forward_arg_extractor else "inputs"
            kinds = ", ".join(type(t).__name__ for t in tensors) or "an empty tuple"
            raise TypeError(
                f"{source} must be a tensor or a tuple of tensors, got {kinds}; "
                "pass forward_arg_extractor to pick the attributed tensors out of a batch"
            )
        if self.additional_forward_arg_extractor is None:
            additional = None
        else:
            additional = self.additional_forward_arg_extractor(batch)
            if additional is not None and not isinstance(additional, tuple):
                additional = tuple(additional) if isinstance(additional, list) else (additional,)
        return forward, additional
