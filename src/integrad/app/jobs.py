"""Attributing whole data sets: sharded, resumable and distributed.

:func:`attribute_dataset` writes one ``shard-NNNNN.safetensors`` per batch
(``attributions``, ``deltas``, ``indices``, ``targets``, ``steps``) and a
``manifest.json`` with the parameters of the run, a fingerprint of the data and
the progress. Each file is written to a temporary file in the same folder,
flushed to disk and renamed over its final name, so a run killed at any moment
leaves only whole shards; running the same command again computes the missing
batches only. Baselines are fixed or drawn from a generator seeded by
``(seed, batch index)``, so a resumed run gives the same numbers as one that was
never interrupted.

Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) batch ``b`` goes to rank
``b % world_size``; rank 0 owns the manifest. Shards are per batch, not per
rank, so any world size can finish what another left.

:func:`load_attributions` reads a finished folder back in data-set order.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
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

import torch
from torch import nn

from .. import arguments
from ..arguments import model_output
from ..engine import parse_bytes
from ..explainers import IntegratedGradients as IntegratedGradientsExplainer
from ..explainers.baselines import BASELINES, get_baseline_fn
from .files import save_tensors, write_json
from .io import DataSource, InputError, load_model, model_fingerprint, open_data, resolve_layer
from .progress import progress_bar

__all__ = [
    "AttributionSet",
    "Attributor",
    "BASELINE_NAMES",
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
    """Integrated gradients for the command line: one model, one set of options.

    Parameters
    ----------
    model : torch.nn.Module
    method : str
        Quadrature rule (see :mod:`integrad.rules`).
    n_steps : int or "auto"
    baseline : str
        A name from :data:`BASELINE_NAMES`. ``mean`` and ``invert`` use the
        statistics recorded by :meth:`fit_baseline` (all the data), if it
        was called, and those of each batch otherwise.
    layer : str, optional
        Dotted submodule name for layer integrated gradients.
    target : "predicted", "label" or int
    pad_token_id, special_ids
        For token inputs (the ``token`` baseline).
    memory_budget : int, optional
        Bytes, passed to the core.
    tolerance : float
        Relative error allowed with ``n_steps="auto"``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str = "gausslegendre",
        n_steps: Any = 50,
        baseline: str = "zeros",
        layer: str | None = None,
        target: Any = "predicted",
        pad_token_id: int | None = None,
        special_ids: Sequence[int] = (),
        memory_budget: int | None = None,
        device: torch.device | None = None,
        tolerance: float = 1e-3,
    ):
        self.model = model
        self.forward = _Forward(model)
        self.method = checked("method", arguments.check_method, method)
        self.n_steps = checked("n_steps", arguments.check_n_steps, n_steps, method, True)
        checked("tolerance", arguments.check_tolerance, tolerance)
        if memory_budget is not None:
            checked("memory_budget", parse_bytes, memory_budget)
        self.baseline = baseline
        self.layer_name = layer
        self.target = target
        self.pad_token_id = pad_token_id
        self.special_ids = tuple(special_ids)
        self.memory_budget = memory_budget
        self.tolerance = tolerance
        self.device = device or torch.device("cpu")
        self.layer = resolve_layer(model, layer) if layer else None
        self.n_outputs: int | None = None
        # mean: the data's mean per position/feature; invert: its max + min (see fit_baseline).
        self._statistic: torch.Tensor | None = None
        self._explainer: IntegratedGradientsExplainer | None = None

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

    def _check_inputs(self, x: torch.Tensor) -> None:
        """Integer inputs need an embedding layer (the first one, unless one was named); the baseline must fit."""
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
        if self.baseline not in BASELINE_NAMES:
            raise InputError("baseline", f"unknown baseline {self.baseline!r}; choose from {', '.join(BASELINE_NAMES)}")

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
                f"integrad: warning: --baseline {self.baseline} of a single example is the example itself, "
                "so every attribution is zero; use zeros, uniform, ... or more examples"
            )
        return count

    def baselines_for(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
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

        Random baselines come from a generator seeded with ``seed``, so the
        same batch and seed give the same numbers in any process.
        """
        return self._explain(x, self.baselines_for(x, seed), targets, extra, seed, self.n_steps)

    def _explain(
        self,
        x: torch.Tensor,
        base: torch.Tensor,
        targets: torch.Tensor | None,
        extra: tuple,
        seed: int,
        n_steps: Any,
    ) -> BatchResult:
        x = x.to(self.device)
        base = base.to(self.device)
        extra = tuple(e.to(self.device) for e in extra)
        tgt = None if targets is None else targets.to(self.device)
        explainer = self.explainer
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            attr = explainer.attribute((x, *extra), tgt, baselines=base)
        if isinstance(attr, (tuple, list)):
            attr = attr[0]
        report = explainer.last_report
        steps = getattr(report, "steps", None)
        if steps is None:
            n = n_steps if isinstance(n_steps, int) else 0
            steps = torch.full((x.shape[0],), n, dtype=torch.long)
        return BatchResult(
            attr.detach().cpu(),
            explainer.last_delta.detach().reshape(-1).cpu(),
            torch.as_tensor(steps).reshape(-1).to(torch.long).cpu(),
            None if targets is None else targets.cpu(),
        )

    @property
    def explainer(self) -> IntegratedGradientsExplainer:
        """The explainer every batch goes through: one object per layer, so that what its core learns about
        chunk sizes carries over from batch to batch."""
        if self._explainer is None or self._explainer.layer is not self.layer:
            options: dict[str, Any] = {"method": self.method}
            if self.memory_budget is not None:
                options["memory_budget"] = self.memory_budget
            if self.n_steps == "auto":
                options["tolerance"] = self.tolerance
            self._explainer = IntegratedGradientsExplainer(
                self.forward,
                n_steps=self.n_steps,
                layer=self.layer,
                forward_arg_extractor=operator.itemgetter(0),
                additional_forward_arg_extractor=_additional,
                **options,
            )
        return self._explainer


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
    n_steps: Any = 50,
    method: str = "gausslegendre",
    baseline: str = "zeros",
    layer: str | None = None,
    seed: int = 0,
    tolerance: float = 1e-3,
    memory_budget: int | None = None,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Path:
    """Attribute every example of a data set into a folder of shards.

    Parameters
    ----------
    model : str
        Model specification (see :func:`integrad.io.load_model`).
    data : str
        Data specification (see :func:`integrad.io.open_data`).
    out : path
        Output folder. An existing folder must hold a run with the same
        parameters (it is then resumed) or be empty.
    target : "predicted", "label" or int
    batch_size : int
        Examples per batch and per shard.
    n_steps : int or "auto"
    method, baseline, layer
        As for :class:`Attributor`. ``mean`` and ``invert`` take their
        statistics over the whole data set (one pass over the data before
        the first batch), except for 4-D images, whose statistics are each
        image's own, so the results do not depend on ``batch_size``.
    seed : int
        Seed of random baselines, 0 to :data:`SEED_MAX`; batch ``b`` uses
        ``seed * 1_000_003 + b``.
    tolerance : float
        Relative error allowed with ``n_steps="auto"``.
    memory_budget : int, optional
        Bytes for path points (see the core's ``memory_budget``).
    device : "auto", "cpu" or "cuda"
    progress : bool
        Show a progress bar on standard error.

    Returns
    -------
    pathlib.Path
        The output folder.

    Raises
    ------
    InputError
        For unusable arguments, before anything is written; and for an
        example that cannot be attributed (a label out of range, a value the
        model refuses) found part-way, naming the batch and the examples. The
        shards finished before it stay, and the same call resumes after them.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError("batch_size", f"must be a positive integer, got {batch_size!r}")
    seed = check_seed(seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("out", f"exists and is not a folder: {out}")
    dist_, dev = _init_distributed(device)
    try:
        return _run(
            model,
            data,
            out,
            dist_,
            dev,
            target=target,
            batch_size=batch_size,
            n_steps=n_steps,
            method=method,
            baseline=baseline,
            layer=layer,
            seed=seed,
            tolerance=tolerance,
            memory_budget=memory_budget,
            progress=progress,
            log=log,
        )
    finally:
        if dist_.active:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def _run(
    model_spec,
    data_spec,
    out: Path,
    dist_: _Dist,
    dev,
    *,
    target,
    batch_size,
    n_steps,
    method,
    baseline,
    layer,
    seed,
    tolerance,
    memory_budget,
    progress,
    log,
) -> Path:
    source: DataSource = open_data(data_spec)
    net = load_model(model_spec).to(dev)
    options = {"method": method, "n_steps": n_steps, "baseline": baseline, "layer": layer, "target": target}
    att = Attributor(net, **options, memory_budget=memory_budget, device=dev, tolerance=tolerance)
    first, first_label = source.batch_with_labels([0])
    labels_known = source.labels if source.labels is not None else (first_label if source.has_labels else None)
    att.validate(first, parameter="data", labels=labels_known)
    job = _Job(source, att, out, dist_, batch_size, seed, log)
    try:
        fitted = att.fit_baseline(
            (source.batch(job.indices(b)) for b in range(job.n_batches)), log=log if dist_.rank == 0 else None
        )
    except BATCH_ERRORS as exc:
        raise InputError("data", f"reading every example for baseline {baseline!r} failed: {_describe(exc)}") from exc
    params = {
        "model": model_spec,
        "model_fingerprint": {**model_fingerprint(model_spec), "weights_sha256": _weights_hash(net)},
        "data": data_spec,
        "data_fingerprint": source.fingerprint,
        "n_examples": len(source),
        **options,
        "tolerance": tolerance if n_steps == "auto" else None,
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
                "refusing to mix them: choose another --out or delete that folder",
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
