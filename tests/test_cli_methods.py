"""``--method`` chooses the method family of ``integrad explain`` and ``integrad attribute-dataset``.

Each family's output file is compared with its explainer in :mod:`integrad.explainers` called directly on the same
examples, with the baselines, background and seeds the command line documents; options that do not fit a family
are refused with a one-line error naming the option, and a data-set run with a family resumes to the same numbers
and refuses a rerun with another family.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from integrad.app.cli import build_parser, main
from integrad.datasets import load_attributions
from integrad.explainers import (
    XRAI,
    BlurIntegratedGradients,
    ExpectedGradients,
    GradientShap,
    GuidedIntegratedGradients,
    IntegratedGradients,
    get_baseline_fn,
)

import cli_factories as fm
import cli_factories as fmeth

#: The seed of batch b is seed * 1_000_003 + b (the command line's documented rule).
SEED = 2
BATCH_SEED = SEED * 1_000_003


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(11)
    np.save(tmp_path / "x.npy", rng.normal(size=(5, fm.N_FEATURES)).astype(np.float32))
    np.save(tmp_path / "img.npy", rng.random((3, 1, 8, 8)).astype(np.float32))
    ids = rng.integers(1, 30, (3, 5))
    np.save(tmp_path / "ids.npy", ids)
    return tmp_path


def _explain(tmp_path, *args, out="out"):
    folder = tmp_path / out
    code = main(["explain", *args, "--out", str(folder), "--no-progress", "--seed", str(SEED)])
    return code, folder


def _background(x: torch.Tensor, count: int) -> torch.Tensor:
    """The documented draw: ``count`` rows without replacement by a generator seeded with --seed, in data order."""
    picked = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(SEED))[:count]
    return x[picked.sort().values]


def _seed_globals(seed: int) -> None:
    """GradientSHAP draws from torch's and numpy's global generators; the command line seeds both per batch."""
    torch.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])


def _direct(family: str, x: torch.Tensor, targets: torch.Tensor):
    """The explainer of each case called directly: (attributions, per-example deltas)."""
    mlp, cnn = fm.mlp(), fmeth.grey_cnn()
    if family == "ig":
        explainer = IntegratedGradients(mlp, n_steps=12, method="riemann_middle")
    elif family == "ig-idgi":
        explainer = IntegratedGradients(mlp, n_steps=12, idgi=True)
    elif family == "blur":
        explainer = BlurIntegratedGradients(cnn, n_steps=8, max_sigma=3.0)
    elif family == "blur-idgi":
        explainer = BlurIntegratedGradients(cnn, n_steps=8, max_sigma=3.0, idgi=True)
    elif family == "guided":
        explainer = GuidedIntegratedGradients(mlp, n_steps=8, fraction=0.5, max_dist=0.05, baseline_fn="uniform")
    elif family == "guided-idgi":
        explainer = GuidedIntegratedGradients(mlp, n_steps=8, idgi=True)
    elif family == "expected":
        explainer = ExpectedGradients(mlp, _background(x, 3), n_samples=7, seed=BATCH_SEED)
    elif family == "expected-rule":
        explainer = ExpectedGradients(
            mlp, _background(x, 4), n_samples=2, n_steps=6, method="riemann_left", seed=BATCH_SEED
        )
    elif family == "gradientshap":
        explainer = GradientShap(mlp, _background(x, 3), n_samples=4, stdevs=0.1)
    else:
        explainer = XRAI(cnn, n_steps=8)
    with torch.random.fork_rng(devices=[]):
        state = np.random.get_state()
        _seed_globals(BATCH_SEED)
        # guided's uniform baseline, drawn with the seed of batch 0.
        baselines = get_baseline_fn("uniform", seed=BATCH_SEED)(x) if family == "guided" else None
        attributions = (
            explainer.attribute(x, targets)
            if baselines is None
            else explainer.attribute(x, targets, baselines=baselines)
        )
        np.random.set_state(state)
    delta = explainer.last_delta.reshape(-1)
    if delta.numel() != x.shape[0]:  # GradientSHAP: one delta per draw, example by example
        delta = delta.view(x.shape[0], -1).mean(1)
    return attributions, delta


CASES = {
    "ig": (["--model", "cli_factories:mlp", "--method", "ig", "--rule", "riemann_middle", "--n-steps", "12"], "x"),
    "ig-idgi": (["--model", "cli_factories:mlp", "--idgi", "--n-steps", "12"], "x"),
    "blur": (["--model", "cli_factories:grey_cnn", "--method", "blur", "--max-sigma", "3", "--n-steps", "8"], "img"),
    "blur-idgi": (
        ["--model", "cli_factories:grey_cnn", "--method", "blur", "--idgi", "--max-sigma", "3", "--n-steps", "8"],
        "img",
    ),
    "guided": (
        [
            "--model",
            "cli_factories:mlp",
            "--method",
            "guided",
            "--n-steps",
            "8",
            "--fraction",
            "0.5",
            "--max-dist",
            "0.05",
            "--baseline",
            "uniform",
        ],
        "x",
    ),
    "guided-idgi": (["--model", "cli_factories:mlp", "--method", "guided", "--idgi", "--n-steps", "8"], "x"),
    "expected": (
        ["--model", "cli_factories:mlp", "--method", "expected", "--background", "3", "--n-samples", "7"],
        "x",
    ),
    "expected-rule": (
        [
            "--model",
            "cli_factories:mlp",
            "--method",
            "expected",
            "--background",
            "4",
            "--n-samples",
            "2",
            "--n-steps",
            "6",
            "--rule",
            "riemann_left",
        ],
        "x",
    ),
    "gradientshap": (
        [
            "--model",
            "cli_factories:mlp",
            "--method",
            "gradientshap",
            "--background",
            "3",
            "--n-samples",
            "4",
            "--stdevs",
            "0.1",
        ],
        "x",
    ),
    "xrai": (["--model", "cli_factories:grey_cnn", "--method", "xrai", "--n-steps", "8"], "img"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_family_writes_what_its_explainer_computes(files, case):
    args, kind = CASES[case]
    code, out = _explain(files, *args, "--inputs", str(files / f"{kind}.npy"))
    assert code == 0
    saved = load_file(str(out / "attributions.safetensors"))
    x = torch.from_numpy(np.load(files / f"{kind}.npy"))
    model = fmeth.grey_cnn() if kind == "img" else fm.mlp()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    assert torch.equal(saved["targets"], predicted)
    expected, delta = _direct(case, x, predicted)
    assert saved["attributions"].shape == expected.shape
    torch.testing.assert_close(saved["attributions"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(saved["deltas"], delta.to(saved["deltas"].dtype), rtol=1e-5, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == case.split("-")[0]
    assert summary.get("idgi", False) == case.endswith("idgi")
    if "--max-sigma" in args:
        assert summary["max_sigma"] == 3.0
    if "--background" in args:
        assert summary["background"] == int(args[args.index("--background") + 1])
    if "idgi" in case:
        # IDGI is complete on its points: the attributions add up to the change of the output along the path.
        assert float(saved["deltas"].abs().max()) < 1e-5


def test_family_defaults_are_the_explainers(files):
    """Options left out take the explainer's defaults (max_sigma 50, fraction 0.25, max_dist 0.02, n_samples 5)."""
    code, out = _explain(files, "--model", "cli_factories:mlp", "--method", "guided", "--inputs", str(files / "x.npy"))
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["fraction"], summary["max_dist"], summary["n_steps"], summary["baseline"]) == (
        0.25,
        0.02,
        50,
        "zeros",
    )
    x = torch.from_numpy(np.load(files / "x.npy"))
    saved = load_file(str(out / "attributions.safetensors"))
    expected = GuidedIntegratedGradients(fm.mlp(), n_steps=50).attribute(x, saved["targets"])
    torch.testing.assert_close(saved["attributions"], expected, rtol=1e-5, atol=1e-6)
    code, out = _explain(
        files, "--model", "cli_factories:grey_cnn", "--method", "blur", "--inputs", str(files / "img.npy"), out="b"
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["max_sigma"] == 50.0 and summary["rule"] is None and summary["baseline"] is None


@pytest.mark.parametrize("family", ["blur", "guided", "xrai"])
def test_deterministic_families_do_not_depend_on_the_batch(files, family):
    kind, model = ("x", "cli_factories:mlp") if family == "guided" else ("img", "cli_factories:grey_cnn")
    results = []
    for batch_size in ("1", "5"):
        code, out = _explain(
            files,
            "--model",
            model,
            "--method",
            family,
            "--n-steps",
            "6",
            "--inputs",
            str(files / f"{kind}.npy"),
            "--batch-size",
            batch_size,
            out=f"out{batch_size}",
        )
        assert code == 0
        results.append(load_file(str(out / "attributions.safetensors"))["attributions"])
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_a_rule_given_as_the_method_is_ig_with_that_rule(files, capsys):
    outputs = {}
    for name, args in (
        ("legacy", ["--method", "riemann_trapezoid"]),
        ("rule", ["--rule", "riemann_trapezoid"]),
        ("both", ["--method", "riemann_trapezoid", "--rule", "riemann_trapezoid"]),
    ):
        code, out = _explain(
            files, "--model", "cli_factories:mlp", "--inputs", str(files / "x.npy"), "--n-steps", "9", *args, out=name
        )
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["method"], summary["rule"]) == ("ig", "riemann_trapezoid")
        outputs[name] = load_file(str(out / "attributions.safetensors"))["attributions"]
    assert torch.equal(outputs["legacy"], outputs["rule"]) and torch.equal(outputs["rule"], outputs["both"])
    x = torch.from_numpy(np.load(files / "x.npy"))
    with torch.no_grad():
        targets = fm.mlp()(x).argmax(1)
    expected = IntegratedGradients(fm.mlp(), n_steps=9, method="riemann_trapezoid").attribute(x, targets)
    torch.testing.assert_close(outputs["rule"], expected, rtol=1e-5, atol=1e-6)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in ("explain", "attribute-dataset"):
        help_text = " ".join(sub.choices[command].format_help().split())
        assert "is taken as --rule with ig, as earlier command lines wrote it" in help_text


# --------------------------------------------------------------------------- refusals


def _refusals(files):
    x, img, ids = str(files / "x.npy"), str(files / "img.npy"), str(files / "ids.npy")
    mlp, cnn = (
        ["--model", "cli_factories:mlp", "--inputs", x],
        ["--model", "cli_factories:grey_cnn", "--inputs", img],
    )
    return [
        ([*cnn, "--method", "blur", "--layer", "0"], "--layer", "layer attribution is for ig"),
        ([*mlp, "--method", "blur"], "--method", "images shaped (N, C, H, W)"),
        ([*mlp, "--method", "xrai"], "--method", "images shaped (N, C, H, W)"),
        (
            ["--model", "cli_factories:token_ids", "--inputs", ids, "--method", "guided"],
            "--method",
            "floating-point inputs",
        ),
        ([*mlp, "--method", "expected", "--background", "2", "--idgi"], "--idgi", "IDGI applies to ig, blur, guided"),
        ([*mlp, "--idgi", "--layer", "0"], "--layer", "IDGI attributes to the inputs"),
        ([*mlp, "--idgi", "--n-steps", "auto"], "--n-steps", "'auto' applies to"),
        ([*mlp, "--method", "guided", "--n-steps", "auto"], "--n-steps", "needs a number of steps"),
        ([*mlp, "--method", "guided", "--rule", "gausslegendre"], "--rule", "no quadrature rule"),
        ([*mlp, "--idgi", "--rule", "gausslegendre"], "--rule", "IDGI sums"),
        ([*mlp, "--method", "expected", "--background", "2", "--rule", "riemann_left"], "--rule", "needs n_steps"),
        ([*mlp, "--method", "riemann_left", "--rule", "gausslegendre"], "--rule", "give the rule once"),
        ([*mlp, "--max-sigma", "3"], "--max-sigma", "applies to blur"),
        ([*cnn, "--method", "blur", "--fraction", "0.5"], "--fraction", "applies to guided"),
        ([*mlp, "--method", "guided", "--fraction", "1.5"], "--fraction", "(0, 1]"),
        ([*mlp, "--method", "expected", "--background", "2", "--stdevs", "0.1"], "--stdevs", "applies to gradientshap"),
        ([*mlp, "--n-samples", "3"], "--n-samples", "applies to expected and gradientshap"),
        ([*mlp, "--method", "expected"], "--background", "needs a background"),
        ([*mlp, "--method", "gradientshap"], "--background", "needs a background"),
        ([*mlp, "--background", "2"], "--background", "applies to expected and gradientshap"),
        ([*mlp, "--method", "expected", "--background", "6"], "--background", "at most 5"),
        ([*mlp, "--method", "gradientshap", "--background", "2", "--n-steps", "4"], "--n-steps", "GradientSHAP"),
        ([*cnn, "--method", "blur", "--baseline", "zeros"], "--baseline", "takes no baseline"),
        ([*mlp, "--method", "expected", "--background", "2", "--baseline", "mean"], "--baseline", "takes no baseline"),
        ([*mlp, "--method", "simpson"], "--method", "invalid choice"),
        ([*mlp, "--method", "blur", "--max-sigma", "-1"], "--max-sigma", "non-negative"),
    ]


def test_what_does_not_fit_a_family_is_refused_naming_the_option(files, capsys):
    for args, option, words in _refusals(files):
        out = files / "out"
        code = main(["explain", *args, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert err.startswith("integrad: error: ") and "\n" not in err, err
        assert option in err and words in err, (option, words, err)
        assert not out.exists(), args
        assert not [p.name for p in files.iterdir() if p.name.startswith(".out")]


def test_dataset_refusals_name_the_option_and_write_nothing(files, capsys):
    np.savez(files / "d.npz", X=np.load(files / "x.npy"))
    for args, option, words in (
        (["--method", "blur"], "--method", "images shaped"),
        (["--method", "expected", "--background", "9"], "--background", "the data hold 5"),
        (["--method", "guided", "--layer", "0"], "--layer", "layer attribution is for ig"),
        (["--method", "expected"], "--background", "needs a background"),
    ):
        out = files / "shards"
        code = main(
            ["attribute-dataset", "--model", "cli_factories:mlp", "--data", str(files / "d.npz"), *args]
            + ["--out", str(out), "--no-progress"]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(f"integrad: error: {option}: ") and "\n" not in err, err
        assert words in err, err
        assert not out.exists()


# --------------------------------------------------------------------------- attribute-dataset


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(12)
    np.savez(path, X=rng.normal(size=(13, fm.N_FEATURES)).astype(np.float32), y=np.arange(13) % fm.N_CLASSES)
    return path


def _dataset(npz, out, *extra):
    args = ["--model", "cli_factories:mlp", "--data", str(npz), "--out", str(out), "--batch-size", "4"]
    return main(["attribute-dataset", *args, "--seed", str(SEED), "--no-progress", *extra])


FAMILY_RUNS = {
    "expected": ["--method", "expected", "--background", "5", "--n-samples", "6"],
    "gradientshap": ["--method", "gradientshap", "--background", "5", "--n-samples", "3", "--stdevs", "0.2"],
    "guided": ["--method", "guided", "--n-steps", "6", "--idgi", "--baseline", "gaussian"],
}


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_dataset_with_a_family_resumes_to_the_same_numbers(tmp_path, npz, capsys, family):
    extra = FAMILY_RUNS[family]
    run, fresh = tmp_path / "run", tmp_path / "fresh"
    assert _dataset(npz, run, *extra) == 0
    manifest = json.loads((run / "manifest.json").read_text())["parameters"]
    assert manifest["method"] == family
    if family != "guided":
        assert manifest["background"] == 5 and manifest["n_samples"] == int(extra[extra.index("--n-samples") + 1])
    else:
        assert manifest["idgi"] is True and manifest["fraction"] == 0.25
    # A shard lost in a crash is made again: the same numbers as a run that was never interrupted.
    (run / "shard-00001.safetensors").unlink()
    (run / "shard-00003.safetensors").unlink()
    assert _dataset(npz, run, *extra) == 0
    assert "resuming: 2 of 4 batches already done" in capsys.readouterr().err
    assert _dataset(npz, fresh, *extra) == 0
    a, b = load_attributions(run), load_attributions(fresh)
    assert torch.equal(a.attributions, b.attributions) and torch.equal(a.deltas, b.deltas)

    # Each batch is what the explainer computes with the batch's seed.
    X = torch.from_numpy(np.load(npz)["X"])
    model = fm.mlp()
    background = _background(X, 5)
    for batch in range(4):
        rows = slice(4 * batch, min(13, 4 * batch + 4))
        seed = BATCH_SEED + batch
        with torch.no_grad():
            targets = model(X[rows]).argmax(1)
        with torch.random.fork_rng(devices=[]):
            state = np.random.get_state()
            _seed_globals(seed)
            if family == "expected":
                expected = ExpectedGradients(model, background, n_samples=6, seed=seed).attribute(X[rows], targets)
            elif family == "gradientshap":
                expected = GradientShap(model, background, n_samples=3, stdevs=0.2).attribute(X[rows], targets)
            else:
                baselines = get_baseline_fn("gaussian", seed=seed)(X[rows])
                expected = GuidedIntegratedGradients(model, n_steps=6, idgi=True).attribute(
                    X[rows], targets, baselines=baselines
                )
            np.random.set_state(state)
        torch.testing.assert_close(a.attributions[rows], expected, rtol=1e-5, atol=1e-6)


def test_dataset_rerun_with_another_family_or_option_is_refused(tmp_path, npz, capsys):
    run = tmp_path / "run"
    assert _dataset(npz, run, *FAMILY_RUNS["expected"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for extra in (
        FAMILY_RUNS["gradientshap"],
        ["--method", "expected", "--background", "5", "--n-samples", "7"],
        ["--method", "expected", "--background", "4", "--n-samples", "6"],
        ["--method", "expected", "--background", "5", "--n-samples", "6", "--n-steps", "8"],
        [],
    ):
        code = _dataset(npz, run, *extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("integrad: error: --out:") and "different parameters" in err, (extra, err)
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    capsys.readouterr()
    assert _dataset(npz, run, *FAMILY_RUNS["expected"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"wrote 4 of 4 shards, 13 examples, to {run.resolve()}") and "load_attributions" in line


# --------------------------------------------------------------------------- progress and the closing line


def test_progress_bar_and_closing_line(files, capsys):
    out = files / "shown"
    code = main(
        ["explain", "--model", "cli_factories:mlp", "--inputs", str(files / "x.npy"), "--method", "guided"]
        + ["--n-steps", "4", "--out", str(out)]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "attributing" in captured.err and "5/5" in captured.err
    assert (
        captured.out.strip().splitlines()[-1] == f"wrote {out}/attributions.safetensors, attributions.png, summary.json"
    )
