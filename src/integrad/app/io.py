"""Loading models, input files and data sets for the command line and for jobs.

Every loader here raises :class:`InputError` (a :class:`ValueError`) that names
the parameter it concerns (``"inputs"``, ``"model"``), so the command line can
print it as a single line, with the parameter's option, and exit with status 2.

Model specifications
--------------------
``package.module:factory``
    A callable (or a dotted attribute path, ``pkg.mod:Class.build``) that
    returns a :class:`torch.nn.Module` when called without arguments.
    The current directory is searched for the module as well.
``model.pt`` / ``model.pth``
    A TorchScript archive, loaded with :func:`torch.jit.load`.
``model.pt2``
    A program saved with :func:`torch.export.save`, loaded with
    :func:`torch.export.load`; its ``.module()`` is used.

Input files
-----------
``.pt`` (a tensor, a ``(X, y)`` pair or a dict with ``X``), ``.npy``,
``.npz`` (array ``X`` or the only array, optional ``y``), ``.csv`` (numeric
rows, optional header; a ``y``/``label``/``target`` column is taken as labels),
``.png``/``.jpg``/``.jpeg``/``.bmp``/``.gif``/``.tif``/``.tiff``/``.webp``
(one image as a float tensor ``(1, C, H, W)``: 8-bit levels divided by 255,
16-bit by 65535, float images as stored; see :func:`load_image`), ``.txt`` (one
text per line, tokenised with a ``transformers`` tokenizer folder), and for
data sets also a folder of images or a ``module:factory`` returning a
:class:`torch.utils.data.Dataset`.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..explainers.resolve import layer_by_name, layer_names_hint

__all__ = [
    "InputError",
    "IMAGE_SUFFIXES",
    "ARRAY_SUFFIXES",
    "LoadedInputs",
    "DataSource",
    "load_language_model",
    "load_model",
    "model_fingerprint",
    "load_inputs",
    "load_array_file",
    "load_image",
    "load_text",
    "open_data",
    "file_fingerprint",
    "resolve_layer",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
ARRAY_SUFFIXES = (".pt", ".pth", ".npy", ".npz", ".csv")
_LABEL_COLUMNS = ("y", "label", "labels", "target", "class")


class InputError(ValueError):
    """An parameter of a job (a file, a model, an option) that cannot be used.

    Parameters
    ----------
    parameter : str
        The parameter concerned, as the library names it (``"inputs"``, ``"n_steps"``); the command line shows it
        as its option (``--inputs``, ``--n-steps``).
    message : str
        What is wrong and, where useful, what is accepted.
    """

    def __init__(self, parameter: str, message: str):
        self.parameter = parameter
        self.message = message
        super().__init__(f"{parameter}: {message}")


# --------------------------------------------------------------------------- models


def _is_spec_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in (".pt", ".pth", ".pt2", ".ts", ".jit")


def _import_attr(spec: str, parameter: str) -> Any:
    if spec.count(":") != 1:
        raise InputError(
            parameter,
            f"cannot use {spec!r}: expected 'package.module:factory', a TorchScript file "
            "(.pt/.pth) or a torch.export program (.pt2)",
        )
    module_name, attr_path = spec.split(":")
    if not module_name or not attr_path:
        raise InputError(parameter, f"cannot use {spec!r}: expected 'package.module:factory'")
    # Factories usually live next to the user's script, as with `python -m`.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the spec's fault
        raise InputError(parameter, f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise InputError(parameter, f"module {module_name!r} has no attribute {attr_path!r}") from exc
    return obj


def load_model(spec: str, parameter: str = "model") -> nn.Module:
    """Load a model from a specification string and put it in evaluation mode.

    Parameters
    ----------
    spec : str
        ``package.module:factory``, a TorchScript file (``.pt``/``.pth``) or a
        ``torch.export`` program file (``.pt2``).
    parameter : str
        Argument name used in error messages.

    Returns
    -------
    torch.nn.Module
    """
    if _is_spec_file(spec) or (os.sep in spec and ":" not in spec):
        path = Path(spec)
        if not path.exists():
            raise InputError(parameter, f"file not found: {spec}")
        if path.is_dir():
            raise InputError(parameter, f"is a directory, expected a model file: {spec}")
        if path.suffix.lower() == ".pt2":
            try:
                program = torch.export.load(str(path))
            except Exception as exc:
                raise InputError(parameter, f"cannot load torch.export program {spec}: {_one_line(exc)}") from exc
            model = program.module()
        else:
            try:
                with warnings.catch_warnings():
                    # TorchScript is deprecated upstream but remains a supported format here.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    model = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise InputError(
                    parameter,
                    f"cannot load TorchScript file {spec}: {_one_line(exc)} "
                    "(a state_dict is not a model: use 'package.module:factory')",
                ) from exc
    else:
        model = _built(spec, parameter)
        if not isinstance(model, nn.Module):
            raise InputError(
                parameter,
                f"factory {spec!r} returned {type(model).__name__}, expected a torch.nn.Module",
            )
    _set_eval(model)
    return model


def _built(spec: str, parameter: str) -> Any:
    """What the ``module:factory`` of ``spec`` names: the object itself if it is a module, else what calling it
    returns."""
    factory = _import_attr(spec, parameter)
    if isinstance(factory, nn.Module):
        return factory
    if not callable(factory):
        raise InputError(
            parameter, f"{spec!r} is a {type(factory).__name__}, expected a callable returning an nn.Module"
        )
    try:
        return factory()
    except Exception as exc:
        raise InputError(parameter, f"factory {spec!r} raised {type(exc).__name__}: {exc}") from exc


def load_language_model(spec: str, parameter: str = "model") -> tuple[nn.Module, Any]:
    """Load a causal language model, with its tokenizer where the factory returns one, in evaluation mode.

    Parameters
    ----------
    spec : str
        As for :func:`load_model`; a ``package.module:factory`` may also return ``(model, tokenizer)``.
    parameter : str
        Argument name used in error messages.

    Returns
    -------
    (torch.nn.Module, tokenizer or None)
    """
    if _is_spec_file(spec) or (os.sep in spec and ":" not in spec):
        return load_model(spec, parameter), None
    built = _built(spec, parameter)
    tokenizer = None
    if isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], nn.Module):
        built, tokenizer = built
    if not isinstance(built, nn.Module):
        raise InputError(
            parameter,
            f"factory {spec!r} returned {type(built).__name__}, expected a torch.nn.Module or (model, tokenizer)",
        )
    if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
        raise InputError(
            parameter,
            f"factory {spec!r} returned a {type(tokenizer).__name__} as the tokenizer, which has no encode(); "
            "return a transformers tokenizer",
        )
    _set_eval(built)
    return built, tokenizer


def _set_eval(model: nn.Module) -> None:
    try:
        model.eval()
    except Exception:
        # Exported programs refuse eval(); they were traced in the mode they run in.
        for module in model.modules():
            module.training = False


def model_fingerprint(spec: str) -> dict:
    """A record identifying a model specification (file hash for model files)."""
    if _is_spec_file(spec) and Path(spec).is_file():
        return {"spec": spec, **file_fingerprint(Path(spec))}
    return {"spec": spec}


def resolve_layer(model: nn.Module, name: str, parameter: str = "layer") -> nn.Module:
    """Return the submodule called ``name`` (dotted path, as in ``named_modules``)."""
    found = layer_by_name(model, name)
    if found is None:
        raise InputError(parameter, f"the model has no layer named {name!r}; {layer_names_hint(model, name)}")
    return found


# --------------------------------------------------------------------------- fingerprints


def file_fingerprint(path: Path, full_hash_limit: int = 256 * 2**20) -> dict:
    """Size and SHA-256 of a file (past 256 MiB: of its head and tail, plus its modification time)."""
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if st.st_size <= full_hash_limit:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
            kind = "sha256"
        else:
            # Too big to hash whole at every start: head, tail, size and mtime stand in for it.
            digest.update(fh.read(16 << 20))
            fh.seek(-(16 << 20), os.SEEK_END)
            digest.update(fh.read())
            kind = "sha256-head-tail"
    record = {"size": st.st_size, kind: digest.hexdigest()}
    if kind != "sha256":
        record["mtime_ns"] = st.st_mtime_ns
    return record


# --------------------------------------------------------------------------- arrays


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _as_tensor(value: Any, parameter: str, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise InputError(parameter, f"{what} is not an array: {_one_line(exc)}") from exc
        if arr.dtype == object or arr.dtype.kind in "USV":
            raise InputError(parameter, f"{what} must be numeric, got dtype {arr.dtype}")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_floating_point():
        # Models are float32 almost always; float64 files are a NumPy default, not a choice.
        return t.to(torch.float32) if t.dtype == torch.float64 else t
    if t.dtype == torch.bool:
        return t.to(torch.float32)
    if t.is_complex():
        raise InputError(parameter, f"{what} is complex; real numbers are needed")
    return t.to(torch.long)


@dataclass
class _Arrays:
    X: torch.Tensor
    y: torch.Tensor | None = None
    feature_names: list | None = None


def _read_csv(path: Path, parameter: str) -> _Arrays:
    try:
        # utf-8-sig: spreadsheet programs start "CSV UTF-8" files with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(parameter, f"cannot read CSV file {path}: {_one_line(exc)}") from exc
    if not rows:
        raise InputError(parameter, f"CSV file has no rows: {path}")

    def numeric(row):
        try:
            return [float(c) for c in row]
        except ValueError:
            return None

    header = None
    if numeric(rows[0]) is None:
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    values = []
    for lineno, row in enumerate(rows, start=2 if header else 1):
        parsed = numeric(row)
        if parsed is None:
            raise InputError(parameter, f"{path} line {lineno}: not all values are numbers")
        values.append(parsed)
    if not values:
        raise InputError(parameter, f"CSV file has a header but no rows: {path}")
    widths = {len(v) for v in values}
    if len(widths) != 1:
        raise InputError(parameter, f"{path}: rows have different lengths {sorted(widths)}")
    arr = np.asarray(values, dtype=np.float32)
    y = None
    if header is not None:
        lower = [h.lower() for h in header]
        label_col = next((lower.index(c) for c in _LABEL_COLUMNS if c in lower), None)
        if label_col is not None and arr.shape[1] > 1:
            y = torch.from_numpy(arr[:, label_col].astype(np.int64))
            arr = np.delete(arr, label_col, axis=1)
            header = header[:label_col] + header[label_col + 1 :]
    return _Arrays(torch.from_numpy(np.ascontiguousarray(arr)), y, header)


def load_array_file(path: str | Path, parameter: str = "inputs") -> _Arrays:
    """Read ``.pt``, ``.npy``, ``.npz`` or ``.csv`` into an ``X`` tensor and optional labels ``y``."""
    path = Path(path)
    _require_file(path, parameter)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, parameter)
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(parameter, f"cannot read .npy file {path}: {_one_line(exc)}") from exc
        return _Arrays(_as_tensor(arr, parameter, "the array"))
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
        except Exception as exc:
            raise InputError(parameter, f"cannot read .npz file {path}: {_one_line(exc)}") from exc
        return _pick_arrays(arrays, parameter, path)
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(
                parameter, f"cannot read {path} with torch.load(weights_only=True): {_one_line(exc)}"
            ) from exc
        if isinstance(obj, torch.Tensor):
            return _Arrays(_as_tensor(obj, parameter, "the tensor"))
        if isinstance(obj, (tuple, list)) and len(obj) in (1, 2) and all(isinstance(o, torch.Tensor) for o in obj):
            y = _as_tensor(obj[1], parameter, "y").to(torch.long) if len(obj) == 2 else None
            return _Arrays(_as_tensor(obj[0], parameter, "X"), y)
        if isinstance(obj, dict):
            return _pick_arrays(obj, parameter, path)
        raise InputError(
            parameter, f"{path} holds a {type(obj).__name__}; expected a tensor, (X, y) or a dict with 'X'"
        )
    raise InputError(
        parameter,
        f"unsupported file type {suffix or '(none)'!r}: use .pt, .npy, .npz, .csv or an image",
    )


def _pick_arrays(arrays: dict, parameter: str, path: Path) -> _Arrays:
    keys = list(arrays)
    for name in ("X", "x", "inputs"):
        if name in arrays:
            X = arrays[name]
            break
    else:
        if len(keys) == 1:
            X = arrays[keys[0]]
        else:
            raise InputError(parameter, f"{path} has arrays {keys}; name the inputs 'X' (and labels 'y')")
    y = None
    if "y" in arrays and arrays["y"] is not X:
        y = _as_tensor(arrays["y"], parameter, "y").to(torch.long)
    return _Arrays(_as_tensor(X, parameter, "X"), y)


def _require_finite(x: torch.Tensor, parameter: str, what: str) -> None:
    """Refuse NaN and infinite values: their attributions are not numbers either."""
    if not x.is_floating_point() or bool(torch.isfinite(x).all()):
        return
    if x.dim() == 0:
        raise InputError(parameter, f"{what} is NaN or infinite; every input must be finite")
    bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1).nonzero().reshape(-1).tolist()
    shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
    which = f"example {shown} holds" if len(bad) == 1 else f"examples {shown} hold"
    raise InputError(parameter, f"{what}: {which} NaN or infinite values; every input must be finite")


def _require_file(path: Path, parameter: str) -> None:
    if not path.exists():
        raise InputError(parameter, f"file not found: {path}")
    if path.is_dir():
        raise InputError(parameter, f"is a directory, expected a file: {path}")


# --------------------------------------------------------------------------- images


def _open_image(path: Path, parameter: str):
    from PIL import Image

    _require_file(path, parameter)
    try:
        img = Image.open(path)
        img.load()
    except Exception as exc:  # Pillow's decoders raise many kinds (DecompressionBombError, struct.error, ...)
        raise InputError(parameter, f"cannot read image {path}: {_one_line(exc)}") from exc
    return img


_GREY_MODES = ("1", "L", "LA", "La", "I", "F")


def _is_grey(img) -> bool:
    return img.mode in _GREY_MODES or img.mode.startswith("I;16")


def _bits_per_sample(img) -> int:
    """Bits per sample in the file of a mode ``I`` image (its pixels are 32-bit integers whatever the file stores)."""
    tags = getattr(img, "tag_v2", None)  # TIFF
    if tags is not None:
        bits = tags.get(258)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int) and 0 < bits <= 32:
            return bits
    if img.format == "PNG":  # at most 16 bits per sample; older Pillow opens 16-bit grey PNGs as mode I
        return 16
    return 32


def _image_to_tensor(img, channels: int) -> torch.Tensor:
    """``(C, H, W)`` float32 with ``C = channels`` (1 or 3); levels scaled as :func:`load_image` documents."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "I":
            bits = _bits_per_sample(img)
            arr = arr / float(2**bits - 1 if bits < 32 else 2**31 - 1)
        elif img.mode != "F":
            arr = arr / 65535.0
        arr = arr.astype(np.float32)[None]
        if channels == 3:
            arr = np.repeat(arr, 3, axis=0)
    else:
        arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _channels(img) -> int:
    return 1 if _is_grey(img) else 3


def load_image(path: str | Path, parameter: str = "inputs", mode: str | None = None) -> torch.Tensor:
    """Read one image as a float tensor of shape ``(1, C, H, W)``.

    Grey-scale images give ``C = 1``, everything else ``C = 3`` (alpha dropped,
    palette images expanded to RGB). The levels are scaled by the file's bit
    depth, so that the full range of an integer image maps to ``[0, 1]``:

    - 8-bit images (the usual PNG, JPEG, ...): divided by 255;
    - 16-bit grey images (Pillow mode ``I;16``): divided by 65535;
    - 32-bit integer images (mode ``I``): divided by ``2**b - 1``, ``b`` being
      the bits per sample the file stores (16 for 16-bit PNG and TIFF files
      that Pillow widens to 32 bits), or by ``2**31 - 1`` for 32-bit samples;
      negative values stay negative;
    - floating-point images (mode ``F``, e.g. a float TIFF): the values as
      stored, not rescaled.

    Parameters
    ----------
    path : path
        The image file.
    parameter : str
        Argument name used in error messages.
    mode : {"L", "RGB"}, optional
        Force one channel (``"L"``) or three (``"RGB"``); by default grey
        images give one and all others three.
    """
    img = _open_image(Path(path), parameter)
    if mode is None:
        channels = _channels(img)
    elif mode in ("L", "RGB"):
        channels = 1 if mode == "L" else 3
    else:
        raise ValueError(f"mode must be None, 'L' or 'RGB'; got {mode!r}")
    return _image_to_tensor(img, channels)[None]


# --------------------------------------------------------------------------- text


def load_tokenizer(tokenizer_dir: str | Path, parameter: str = "tokenizer"):
    """Load a ``transformers`` tokenizer from a local folder, never from the network."""
    path = Path(tokenizer_dir)
    if not path.exists():
        raise InputError(parameter, f"folder not found: {path}")
    if not path.is_dir():
        raise InputError(parameter, f"expected a tokenizer folder, got a file: {path}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise InputError(parameter, "needs the 'transformers' package (pip install 'integrad[text]')") from exc
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise InputError(parameter, f"cannot load a tokenizer from {path}: {_one_line(exc)}") from exc


def load_text(path: str | Path, tokenizer, parameter: str = "inputs"):
    """Tokenise a text file (one example per non-empty line).

    Returns
    -------
    dict
        ``input_ids`` and ``attention_mask`` (LongTensor ``(N, L)``, padded to the
        longest line) and ``tokens`` (list of token strings per example).
    """
    path = Path(path)
    _require_file(path, parameter)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(parameter, f"cannot read text file {path}: {_one_line(exc)}") from exc
    if not lines:
        raise InputError(parameter, f"text file is empty: {path}")
    enc = tokenizer(lines, padding=True, truncation=True, return_tensors="pt")
    ids = enc["input_ids"].to(torch.long)
    mask = enc.get("attention_mask", torch.ones_like(ids)).to(torch.long)
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    return {"input_ids": ids, "attention_mask": mask, "tokens": tokens, "texts": lines}


# --------------------------------------------------------------------------- explain inputs


@dataclass
class LoadedInputs:
    """Inputs for one ``explain`` run.

    Attributes
    ----------
    inputs : torch.Tensor
        The tensor attributed (token ids for text).
    extra : tuple
        Further positional model arguments (the attention mask for text).
    kind : str
        ``"image"``, ``"features"``, ``"text"`` or ``"tensor"``.
    """

    inputs: torch.Tensor
    extra: tuple = ()
    kind: str = "tensor"
    labels: torch.Tensor | None = None
    feature_names: list | None = None
    tokens: list | None = None
    texts: list | None = None
    meta: dict = field(default_factory=dict)


def _kind_of(x: torch.Tensor) -> str:
    """What a batch ``x`` holds; its first dimension is always the batch.

    ``(N, C, H, W)`` floats with 1, 3 or 4 channels are images, ``(N, F)`` floats are feature rows, anything
    else (sequences ``(N, L, D)``, token ids, ...) is a plain tensor.
    """
    if x.dim() == 4 and x.shape[1] in (1, 3, 4) and x.is_floating_point():
        return "image"
    if x.dim() == 2 and x.is_floating_point():
        return "features"
    return "tensor"


def load_inputs(path: str | Path, tokenizer_dir: str | None = None, parameter: str = "inputs") -> LoadedInputs:
    """Load the ``--inputs`` file of ``integrad explain``.

    A single example without a batch dimension is not guessed at: arrays are
    used as given, with the first dimension as the batch, whatever its size
    (a ``(3, L, D)`` array is three sequences, not one 3-channel image).
    Image files get a batch dimension of one.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if tokenizer_dir is None:
            _require_file(path, parameter)
            raise InputError("tokenizer", "a .txt input needs a tokenizer: a transformers tokenizer folder")
        tok = load_tokenizer(tokenizer_dir)
        enc = load_text(path, tok, parameter)
        return LoadedInputs(
            enc["input_ids"],
            (enc["attention_mask"],),
            "text",
            tokens=enc["tokens"],
            texts=enc["texts"],
            meta={"pad_token_id": tok.pad_token_id, "special_ids": sorted(set(tok.all_special_ids))},
        )
    if suffix in IMAGE_SUFFIXES:
        image = load_image(path, parameter)
        _require_finite(image, parameter, str(path))
        return LoadedInputs(image, (), "image")
    if suffix in ARRAY_SUFFIXES:
        arrays = load_array_file(path, parameter)
        X = arrays.X
        if X.dim() == 0:
            raise InputError(parameter, f"{path} holds a scalar; expected a batch of examples")
        if X.shape[0] == 0:
            raise InputError(parameter, f"{path} holds no examples")
        _require_finite(X, parameter, str(path))
        return LoadedInputs(X, (), _kind_of(X), labels=arrays.y, feature_names=arrays.feature_names)
    _require_file(path, parameter)
    raise InputError(
        parameter,
        f"unsupported file type {suffix or '(none)'!r}: use .pt, .npy, .npz, .csv, .png/.jpg or .txt",
    )


# --------------------------------------------------------------------------- data sets


class DataSource:
    """An indexable collection of examples for ``attribute-dataset``.

    Attributes
    ----------
    spec : str
        The ``--data`` value.
    fingerprint : dict
        Identifies the data's content (sizes, hashes).
    labels : torch.Tensor or None
        All labels, where they are at hand without reading every example.
    has_labels : bool
        Whether examples come with labels (``batch_with_labels`` returns them).
    """

    def __init__(
        self,
        spec: str,
        n: int,
        get: Callable[[Sequence[int]], tuple],
        fingerprint: dict,
        labels: torch.Tensor | None = None,
        kind: str = "tensor",
        has_labels: bool | None = None,
    ):
        self.spec = spec
        self._n = n
        self._get = get
        self.fingerprint = fingerprint
        self.labels = labels
        self.kind = kind
        self.has_labels = labels is not None if has_labels is None else has_labels

    def __len__(self) -> int:
        return self._n

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Stack the examples at ``indices`` into one tensor."""
        return self._get(list(indices))[0]

    def batch_with_labels(self, indices: Sequence[int]) -> tuple:
        """``(x, y)`` for ``indices``; ``y`` is None for unlabelled data."""
        return self._get(list(indices))


def open_data(spec: str, parameter: str = "data") -> DataSource:
    """Open the ``--data`` of ``attribute-dataset``.

    Parameters
    ----------
    spec : str
        ``.npz``/``.npy``/``.pt``/``.csv`` file, a folder of images, or
        ``module:factory`` returning a :class:`torch.utils.data.Dataset` whose
        items are tensors or tuples ``(x, y, ...)``.
    """
    path = Path(spec)
    if path.is_dir():
        return _image_folder(path, spec, parameter)
    if path.exists() or path.suffix.lower() in ARRAY_SUFFIXES or ":" not in spec:
        arrays = load_array_file(path, parameter)
        X = arrays.X
        if X.dim() == 0 or X.shape[0] == 0:
            raise InputError(parameter, f"{spec} holds no examples")
        if arrays.y is not None and arrays.y.shape[0] != X.shape[0]:
            raise InputError(parameter, f"{spec}: X has {X.shape[0]} rows but y has {arrays.y.shape[0]}")
        _require_finite(X, parameter, spec)
        fp = {"kind": "file", **file_fingerprint(path)}
        y = arrays.y
        return DataSource(spec, X.shape[0], lambda idx: (X[idx], None if y is None else y[idx]), fp, y, _kind_of(X))
    return _factory_dataset(spec, parameter)


def _image_folder(path: Path, spec: str, parameter: str) -> DataSource:
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(parameter, f"folder has no images ({', '.join(IMAGE_SUFFIXES)}): {spec}")
    first = _open_image(files[0], parameter)
    channels = _channels(first)
    size = first.size
    # Check every image up front: a bad file must stop the run before anything is written.
    for f in files[1:]:
        img = _open_image(f, parameter)
        if img.size != size:
            raise InputError(parameter, f"images differ in size: {files[0].name} is {size}, {f.name} is {img.size}")
        if _channels(img) != channels:
            channels = 3
    fp = {
        "kind": "image-folder",
        "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }

    def image(i):
        x = _image_to_tensor(_open_image(files[i], parameter), channels)
        if not bool(torch.isfinite(x).all()):
            raise InputError(
                parameter, f"image {files[i].name} holds NaN or infinite values; every input must be finite"
            )
        return x

    def get(idx):
        return torch.stack([image(i) for i in idx]), None

    return DataSource(spec, len(files), get, fp, None, "image")


def _factory_dataset(spec: str, parameter: str) -> DataSource:
    factory = _import_attr(spec, parameter)
    try:
        # A Dataset class is a factory too (its instances, not the class, have items).
        is_factory = callable(factory) and (isinstance(factory, type) or not hasattr(factory, "__getitem__"))
        ds = factory() if is_factory else factory
    except Exception as exc:
        raise InputError(parameter, f"factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if isinstance(ds, nn.Module) or not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise InputError(
            parameter, f"factory {spec!r} returned {type(ds).__name__}, expected a map-style torch Dataset"
        )
    n = len(ds)
    if n == 0:
        raise InputError(parameter, f"dataset {spec!r} is empty")

    def x_of(i, item):
        if isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, dict):
            raise InputError(parameter, "dataset items that are dicts are not supported; return x or (x, y)")
        x = _as_tensor(item, parameter, f"item {i}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise InputError(parameter, f"item {i} holds NaN or infinite values; every input must be finite")
        return x

    first = ds[0]
    has_labels = isinstance(first, (tuple, list)) and len(first) >= 2

    def get(idx):
        items = [ds[i] for i in idx]
        xs = [x_of(i, item) for i, item in zip(idx, items)]
        for i, t in zip(idx, xs):
            if t.shape != xs[0].shape:
                raise InputError(
                    parameter,
                    f"item {i} has shape {tuple(t.shape)} but item {idx[0]} has {tuple(xs[0].shape)}; "
                    "every example must have the same shape",
                )
        x = torch.stack(xs)
        if not has_labels:
            return x, None
        try:
            return x, torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
        except (TypeError, ValueError) as exc:
            raise InputError(parameter, f"labels must be class indices: {exc}") from exc

    def digest(i):
        t = x_of(i, ds[i]).contiguous()
        return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]

    # Hashing every item would read the whole data set; its size and its first and last items stand in.
    fp = {"kind": "factory", "len": n, "class": type(ds).__name__, "first": digest(0), "last": digest(n - 1)}
    return DataSource(spec, n, get, fp, None, _kind_of(get([0])[0]), has_labels=has_labels)
