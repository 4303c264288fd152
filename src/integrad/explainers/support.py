"""Which models an explainer supports, by the kinds of modules they are built from.

Integrated gradients needs a model whose output is differentiable in its inputs (or in the attributed layer). The
module categories below are the building blocks it is known to handle: affine maps, convolutions and attention.
:func:`check_support` scans a model for them and says, readably, whether and why the explainer applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch.nn as nn

__all__ = [
    "Attention",
    "Convolution",
    "Linear",
    "ModuleCategory",
    "SUPPORTED_MODULES",
    "SupportReport",
    "check_support",
]


class _CategoryType(type):
    """Makes a category class answer ``isinstance(module, Category)`` (and ``issubclass``) by its member types and
    class-name fragments, as pnpxai's module types do."""

    def __instancecheck__(cls, module: object) -> bool:
        return isinstance(module, nn.Module) and cls.matches(module)

    def __subclasscheck__(cls, subclass: type) -> bool:
        if type.__subclasscheck__(cls, subclass):
            return True
        if not (isinstance(subclass, type) and issubclass(subclass, nn.Module)):
            return False
        return issubclass(subclass, cls.types) or any(f in subclass.__name__ for f in cls.name_fragments)

    def __repr__(cls) -> str:
        return cls.name


class ModuleCategory(metaclass=_CategoryType):
    """A family of modules, recognised by type or by class-name fragment; the families are subclasses.

    ``isinstance(module, Linear)`` says whether ``module`` belongs to the family ``Linear``, so the entries of
    ``SUPPORTED_MODULES`` work as pnpxai's do. A third-party module belongs when its class name contains one of the
    family's fragments (``BertSelfAttention`` is an ``Attention``), which needs no import of its library.

    Attributes
    ----------
    name : str
        Display name.
    types : tuple of type
        ``nn.Module`` subclasses that belong to the family (their subclasses too).
    name_fragments : tuple of str
        Class-name fragments that make a module a member.
    """

    name: str = "ModuleCategory"
    types: tuple[type[nn.Module], ...] = ()
    name_fragments: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Whether ``module`` belongs to this family."""
        if cls.types and isinstance(module, cls.types):
            return True
        class_name = type(module).__name__
        return any(fragment in class_name for fragment in cls.name_fragments)


class Linear(ModuleCategory):
    """Affine maps."""

    types = (nn.Linear, nn.Bilinear)


class Convolution(ModuleCategory):
    """Convolutions and transposed convolutions, 1-D to 3-D."""

    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


class Attention(ModuleCategory):
    """Attention blocks: torch's, and any module whose class name says it is one."""

    types = (nn.MultiheadAttention,)
    name_fragments = ("Attention", "SelfAttention")


#: The module categories the integrated-gradients explainer supports.
SUPPORTED_MODULES: list[type[ModuleCategory]] = [Linear, Convolution, Attention]


@dataclass
class SupportReport:
    """Outcome of :func:`check_support`.

    Attributes
    ----------
    supported : bool
        Whether the model contains at least one module of a supported category.
    model_name : str
        Class name of the scanned model.
    matches : dict
        Category name -> dotted names of the matching modules (``""`` is the model itself).
    reason : str
        One sentence saying why.
    notes : list of str
        Hints that do not change the verdict (e.g. an embedding layer to attribute at).
    """

    supported: bool
    model_name: str
    matches: dict[str, list[str]] = field(default_factory=dict)
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.supported

    def __str__(self) -> str:
        verdict = "supported" if self.supported else "not supported"
        lines = [f"{self.model_name}: {verdict}. {self.reason}"]
        for category, names in self.matches.items():
            if names:
                shown = ", ".join(name or "<model>" for name in names[:5])
                more = f", … (+{len(names) - 5})" if len(names) > 5 else ""
                lines.append(f"  {category}: {len(names)} module(s): {shown}{more}")
            else:
                lines.append(f"  {category}: none")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def check_support(model: nn.Module, modules: Sequence[type[ModuleCategory]] | None = None) -> SupportReport:
    """Scan ``model`` for supported module categories.

    Parameters
    ----------
    model : torch.nn.Module
        The model to scan (not modified).
    modules : sequence of ModuleCategory subclasses, optional
        Categories to look for; default :data:`SUPPORTED_MODULES`.

    Returns
    -------
    SupportReport
        ``supported`` is true when at least one module of a listed category occurs; ``str(report)`` explains.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    categories = list(SUPPORTED_MODULES if modules is None else modules)
    matches: dict[str, list[str]] = {category.name: [] for category in categories}
    embeddings: list[str] = []
    for name, module in model.named_modules():
        for category in categories:
            if category.matches(module):
                matches[category.name].append(name)
                break
        if isinstance(module, nn.Embedding):
            embeddings.append(name)
    found = [category for category, names in matches.items() if names]
    wanted = ", ".join(category.name for category in categories)
    if found:
        reason = f"It contains {', '.join(found)} modules, which the explainer handles."
    else:
        reason = f"It contains no {wanted} module, the module kinds the explainer is known to handle."
    notes = []
    if embeddings:
        notes.append(
            f"embedding layer(s) {', '.join(embeddings[:3])}: integer token inputs are not differentiable; "
            f"attribute at an embedding layer, e.g. layer={embeddings[0]!r}"
        )
    if next(iter(model.parameters()), None) is None:
        notes.append("the model has no parameters; attributions need its output to be differentiable in the inputs")
    return SupportReport(bool(found), type(model).__name__, matches, reason, notes)
