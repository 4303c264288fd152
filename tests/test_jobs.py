"""Whole data sets (:mod:`integrad.app.jobs`, public as :mod:`integrad.datasets`): ``integrad attribute-dataset`` and
:func:`integrad.datasets.load_attributions`.

Resumption is tested the hard way (SIGKILL of a real process part-way, then the same command again, compared
bit for bit with a run that was never interrupted), and so is the distributed mode (two processes under
``torch.distributed.run`` with gloo, compared with one process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from integrad.app.cli import main
from integrad.app.io import InputError
from integrad.datasets import attribute_dataset, load_attributions

import cli_factories as fm

TESTS = Path(__file__).resolve().parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def _cli(*args):
    return [sys.executable, "-m", "integrad", "attribute-dataset", *args]


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "data.npz"
    np.savez(path, X=rng.normal(size=(23, fm.N_FEATURES)).astype(np.float32), y=np.arange(23) % fm.N_CLASSES)
    return path


def _attribute(npz, out, **kw):
    options = dict(batch_size=5, n_steps=16, progress=False)
    options.update(kw)
    return attribute_dataset("cli_factories:mlp", str(npz), out, **options)


# --------------------------------------------------------------------------- results


def test_shards_manifest_and_completeness(tmp_path, npz):
    out = _attribute(npz, tmp_path / "run", target="label")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["manifest.json"] + [f"shard-{b:05d}.safetensors" for b in range(5)]
    manifest = json.loads((out / "manifest.json").read_text())
    params = manifest["parameters"]
    for key in (
        "model",
        "data",
        "data_fingerprint",
        "method",
        "n_steps",
        "baseline",
        "layer",
        "target",
        "batch_size",
        "integrad_version",
    ):
        assert key in params
    assert params["batch_size"] == 5 and params["target"] == "label" and params["n_steps"] == 16
    assert manifest["progress"]["complete"] and manifest["progress"]["batches_done"] == 5
    shard = load_file(str(out / "shard-00004.safetensors"))
    assert shard["indices"].tolist() == [20, 21, 22]
    assert set(shard) >= {"attributions", "deltas", "indices", "targets"}

    attributions, deltas = load_attributions(out)
    result = load_attributions(out)
    data = np.load(npz)
    x = torch.from_numpy(data["X"])
    y = torch.from_numpy(data["y"])
    assert torch.equal(result.indices, torch.arange(23))
    assert torch.equal(result.targets, y)
    with torch.no_grad():
        model = fm.mlp()
        gain = (model(x) - model(torch.zeros_like(x))).gather(1, y.view(-1, 1)).squeeze(1)
    assert torch.allclose(attributions.sum(1), gain, atol=1e-5)
    assert torch.allclose(deltas, attributions.sum(1) - gain, atol=1e-5)


def test_predicted_target_and_other_data_kinds(tmp_path):
    from PIL import Image

    # A folder of images, read in name order.
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(4)
    pixels = (rng.random((4, 5, 5, 3)) * 255).astype(np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"img{i}.png")
    out = attribute_dataset(
        "cli_factories:rgb_cnn", str(folder), tmp_path / "a", batch_size=3, n_steps=16, progress=False
    )
    res = load_attributions(out)
    x = torch.from_numpy(pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    with torch.no_grad():
        predicted = fm.rgb_cnn()(x).argmax(1)
    assert torch.equal(res.targets, predicted)
    assert res.attributions.shape == x.shape

    # A torch Dataset from a factory, and the same data as CSV: the same attributions.
    ds = fm.tensor_dataset()
    X = torch.stack([ds[i][0] for i in range(len(ds))])
    csv = tmp_path / "d.csv"
    csv.write_text("\n".join(",".join(repr(float(v)) for v in row) for row in X.tolist()) + "\n")
    a = load_attributions(
        attribute_dataset(
            "cli_factories:mlp",
            "cli_factories:tensor_dataset",
            tmp_path / "b",
            batch_size=4,
            n_steps=8,
            progress=False,
        )
    )
    b = load_attributions(
        attribute_dataset("cli_factories:mlp", str(csv), tmp_path / "c", batch_size=4, n_steps=8, progress=False)
    )
    assert torch.allclose(a.attributions, b.attributions, atol=1e-6)


def test_seeded_noise_baseline_is_reproducible_and_seed_dependent(tmp_path, npz):
    a = load_attributions(_attribute(npz, tmp_path / "a", baseline="uniform", seed=1))
    b = load_attributions(_attribute(npz, tmp_path / "b", baseline="uniform", seed=1))
    c = load_attributions(_attribute(npz, tmp_path / "c", baseline="uniform", seed=2))
    assert torch.equal(a.attributions, b.attributions)
    assert not torch.allclose(a.attributions, c.attributions)


def test_partial_folder(tmp_path, npz):
    out = _attribute(npz, tmp_path / "run")
    (out / "shard-00002.safetensors").unlink()
    with pytest.raises(ValueError, match=r"1 of 5 batches are missing \(2\)"):
        load_attributions(out)
    part = load_attributions(out, allow_partial=True)
    assert part.indices.tolist() == [i for i in range(23) if not 10 <= i < 15]


def test_resume_recomputes_missing_and_foreign_shards(tmp_path, npz):
    ref = load_attributions(_attribute(npz, tmp_path / "ref", baseline="gaussian"))
    out = _attribute(npz, tmp_path / "run", baseline="gaussian")
    (out / "shard-00001.safetensors").unlink()
    # A shard of another run under a valid name is not mixed in, and neither is a leftover temporary file.
    other = _attribute(npz, tmp_path / "other", baseline="zeros")
    (out / "shard-00003.safetensors").write_bytes((other / "shard-00003.safetensors").read_bytes())
    (out / ".shard-00004.safetensors.abc.tmp").write_bytes(b"half a shard")
    _attribute(npz, out, baseline="gaussian")
    res = load_attributions(out)
    assert torch.equal(res.attributions, ref.attributions)
    assert torch.equal(res.deltas, ref.deltas)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- refusals and bad input


def test_different_parameters_refused_folder_unchanged(tmp_path, npz, capsys):
    out = _attribute(npz, tmp_path / "run")
    before = _snapshot(out)
    for extra in (
        ["--n-steps", "17"],
        ["--batch-size", "4"],
        ["--baseline", "mean"],
        ["--target", "1"],
        ["--method", "riemann_middle"],
    ):
        args = ["--model", "cli_factories:mlp", "--data", str(npz), "--out", str(out), "--no-progress"]
        defaults = {"--n-steps": "16", "--batch-size": "5"}
        for k, v in defaults.items():
            if k not in extra:
                args += [k, v]
        code = main(["attribute-dataset", *args, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2, extra
        assert err.startswith("integrad: error: --out:") and "different parameters" in err, err
        assert _snapshot(out) == before
    # Changed data content is refused too.
    data = dict(np.load(npz))
    data["X"][0, 0] += 1.0
    np.savez(npz, **data)
    assert (
        main(
            [
                "attribute-dataset",
                "--model",
                "cli_factories:mlp",
                "--data",
                str(npz),
                "--out",
                str(out),
                "--n-steps",
                "16",
                "--batch-size",
                "5",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "data_fingerprint" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_non_empty_foreign_folder_refused(tmp_path, npz, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("x")
    assert main(["attribute-dataset", "--model", "cli_factories:mlp", "--data", str(npz), "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_bad_dataset_inputs(tmp_path, npz, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(images / "b.png")
    cases = [
        (["--model", "cli_factories:mlp", "--data", str(tmp_path / "none.npz")], "--data", "file not found"),
        (["--model", "cli_factories:small_cnn", "--data", str(npz)], "--data", "rejected an input of shape"),
        (["--model", "cli_factories:mlp", "--data", str(images)], "--data", "differ in size"),
        (["--model", "cli_factories:mlp", "--data", "cli_factories:mlp"], "--data", "expected a map-style"),
        (["--model", "cli_factories:mlp", "--data", "cli_factories:not_a_module"], "--data", "map-style"),
        (["--model", "cli_factories:mlp", "--data", "nowhere_module:data"], "--data", "cannot import"),
        (["--model", "cli_factories:nothing", "--data", str(npz)], "--model", "no attribute"),
        (["--model", "cli_factories:not_a_module", "--data", str(npz)], "--model", "nn.Module"),
        (["--model", "cli_factories:mlp", "--data", str(npz), "--target", "5"], "--target", "out of range"),
        (["--model", "cli_factories:mlp", "--data", str(npz), "--layer", "9"], "--layer", "no layer named"),
        (["--model", "cli_factories:mlp", "--data", str(npz), "--batch-size", "0"], "--batch-size", "positive"),
    ]
    for args, argument, words in cases:
        out = tmp_path / "out"
        code = main(["attribute-dataset", *args, "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert err.startswith("integrad: error:") and "\n" not in err
        assert argument in err and words in err, (argument, words, err)
        assert not out.exists(), args


# --------------------------------------------------------------------------- kill -9 and resume


def _count_shards(folder: Path) -> int:
    return len(list(folder.glob("shard-*.safetensors"))) if folder.exists() else 0


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    rng = np.random.default_rng(5)
    data = tmp_path / "data.npz"
    np.savez(data, X=rng.normal(size=(40, fm.N_FEATURES)).astype(np.float32))
    args = [
        "--model",
        "cli_factories:slow_mlp",
        "--data",
        str(data),
        "--batch-size",
        "2",
        "--n-steps",
        "8",
        "--baseline",
        "uniform",
        "--seed",
        "3",
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(*args, "--out", str(killed)), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 90
    try:
        while _count_shards(killed) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no shard appeared"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = _count_shards(killed)
    assert 2 <= done_at_kill < 20  # killed part-way
    assert not json.loads((killed / "manifest.json").read_text())["progress"]["complete"]

    resumed = subprocess.run(_cli(*args, "--out", str(killed)), env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    fresh = subprocess.run(
        _cli(*args, "--out", str(tmp_path / "fresh")), env=_env(), capture_output=True, text=True, timeout=120
    )
    assert fresh.returncode == 0, fresh.stderr
    a, b = load_attributions(killed), load_attributions(tmp_path / "fresh")
    assert torch.equal(a.attributions, b.attributions)
    assert torch.equal(a.deltas, b.deltas)
    assert torch.equal(a.targets, b.targets)
    assert torch.equal(a.indices, torch.arange(40))
    assert json.loads((killed / "manifest.json").read_text())["progress"]["complete"]
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- torch.distributed


def test_two_processes_equal_one(tmp_path, npz):
    single = _attribute(npz, tmp_path / "single", baseline="gaussian", seed=4)
    out = tmp_path / "dist"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "integrad",
        "attribute-dataset",
        "--model",
        "cli_factories:mlp",
        "--data",
        str(npz),
        "--out",
        str(out),
        "--batch-size",
        "5",
        "--n-steps",
        "16",
        "--baseline",
        "gaussian",
        "--seed",
        "4",
        "--no-progress",
        "--device",
        "cpu",
    ]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = load_attributions(single), load_attributions(out)
    assert torch.allclose(a.attributions, b.attributions, atol=1e-6)
    assert torch.allclose(a.deltas, b.deltas, atol=1e-6)
    assert torch.equal(a.targets, b.targets)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["progress"]["complete"]
    assert manifest["parameters"] == json.loads((single / "manifest.json").read_text())["parameters"]

    # Every rank follows rank 0's refusal of other parameters: no hang, nothing changed.
    before = _snapshot(out)
    bad = [c if c != "16" else "12" for c in cmd]
    res = subprocess.run(bad, env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode != 0
    assert "integrad: error: --out:" in res.stderr and "n_steps: 16 there, 12 now" in res.stderr
    assert _snapshot(out) == before

    # A folder begun by two processes is finished by one: shards are per batch, not per rank.
    (out / "shard-00001.safetensors").unlink()
    (out / "shard-00004.safetensors").unlink()
    _attribute(npz, out, baseline="gaussian", seed=4)
    assert torch.allclose(load_attributions(out).attributions, a.attributions, atol=1e-6)


# --------------------------------------------------------------------------- problems found late, and resuming


def _error_line(capsys, code, argument, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    line = err[-1]
    assert line.startswith(f"integrad: error: {argument}: "), err
    assert not [e for e in err if "Traceback" in e], err
    for w in words:
        assert w in line, (w, line)
    return line


def test_baseline_that_does_not_fit_is_refused_before_writing(tmp_path, npz, capsys):
    out = tmp_path / "run"
    args = [
        "attribute-dataset",
        "--model",
        "cli_factories:mlp",
        "--data",
        str(npz),
        "--out",
        str(out),
        "--no-progress",
        "--n-steps",
        "8",
    ]
    code = main([*args, "--baseline", "gaussian_blur"])
    _error_line(capsys, code, "--baseline", "gaussian_blur", "does not fit")
    assert not out.exists()
    # The corrected command is not refused as 'different parameters'.
    assert main([*args, "--baseline", "zeros"]) == 0
    assert load_attributions(out).attributions.shape == (23, fm.N_FEATURES)


def test_label_out_of_range_part_way_keeps_finished_shards_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = [
        "attribute-dataset",
        "--model",
        "cli_factories:mlp",
        "--data",
        "cli_factories:bad_last_label",
        "--target",
        "label",
        "--batch-size",
        "4",
        "--n-steps",
        "8",
        "--out",
        str(out),
        "--no-progress",
    ]
    code = main(args)
    _error_line(
        capsys,
        code,
        "--target",
        "batch 2",
        "shard-00002.safetensors",
        "label 7 (example 9)",
        "2 finished shards are kept",
        "resumes",
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    # With the label mended the same command finishes the run, and gives what a clean run gives.
    monkeypatch.setenv("FIXTURE_LAST_LABEL", "1")
    assert main(args) == 0
    assert "resuming: 2 of 3 batches already done" in capsys.readouterr().err
    clean = tmp_path / "clean"
    assert main([*args[:-3], "--out", str(clean), "--no-progress"]) == 0
    a, b = load_attributions(out), load_attributions(clean)
    assert torch.equal(a.attributions, b.attributions) and a.targets[9] == 1


def test_value_the_model_refuses_part_way_names_the_example(tmp_path, capsys):
    import cli_factories as cm

    ids = np.random.default_rng(9).integers(1, cm.TOKEN_VOCAB, (8, 5))
    ids[5, 0] = cm.TOKEN_VOCAB  # one past the vocabulary
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "run"
    code = main(
        [
            "attribute-dataset",
            "--model",
            "cli_factories:token_ids",
            "--data",
            str(tmp_path / "ids.npy"),
            "--batch-size",
            "2",
            "--n-steps",
            "8",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    _error_line(
        capsys,
        code,
        "--data",
        "example 5 (batch 2, shard-00002.safetensors, examples 4..5)",
        "IndexError",
        "2 finished shards are kept",
        "resumes",
    )
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]


def test_dataset_items_of_different_shapes(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "attribute-dataset",
            "--model",
            "cli_factories:mlp",
            "--data",
            "cli_factories:Ragged",
            "--batch-size",
            "3",
            "--n-steps",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    _error_line(capsys, code, "--data", "batch 1", "item 4 has shape (5,)", "finished shard is kept")


def test_seed_is_checked_before_writing(tmp_path, npz, capsys):
    for seed in ("100000000000000", "-3"):
        out = tmp_path / "run"
        code = main(
            [
                "attribute-dataset",
                "--model",
                "cli_factories:mlp",
                "--data",
                str(npz),
                "--out",
                str(out),
                "--baseline",
                "uniform",
                "--seed",
                seed,
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and "--seed" in err and "0 to 4294967295" in err and "\n" not in err, err
        assert not out.exists()
    with pytest.raises(InputError, match="seed: expected an integer from 0 to 4294967295"):
        _attribute(npz, tmp_path / "run", seed=2**40)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("baseline", ["mean", "invert"])
def test_data_baselines_do_not_depend_on_batch_size(tmp_path, npz, baseline):
    # 23 examples in batches of 11 end with a batch of one, which a per-batch statistic would give all zeros.
    runs = {
        bs: load_attributions(
            attribute_dataset(
                "cli_factories:linear",
                str(npz),
                tmp_path / f"b{bs}",
                batch_size=bs,
                n_steps=4,
                target=2,
                baseline=baseline,
                progress=False,
            )
        )
        for bs in (11, 23)
    }
    x = torch.from_numpy(np.load(npz)["X"]).double()
    base = x.mean(0).expand_as(x) if baseline == "mean" else x.amax(0) + x.amin(0) - x
    expected = ((x - base) * fm.linear().weight.detach().double()[2]).float()
    for bs, res in runs.items():
        assert torch.allclose(res.attributions, expected, atol=1e-5), bs
        assert res.manifest["parameters"]["baseline_statistics"] == "whole data set"
    assert runs[11].attributions[22].abs().sum() > 0


def test_data_named_another_way_resumes(tmp_path, npz, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _attribute(npz.name, "run")
    (out / "shard-00003.safetensors").unlink()
    before = json.loads((out / "manifest.json").read_text())
    for spelling in (f"./{npz.name}", str(npz), f"../{tmp_path.name}/{npz.name}"):
        assert (
            main(
                [
                    "attribute-dataset",
                    "--model",
                    "cli_factories:mlp",
                    "--data",
                    spelling,
                    "--out",
                    "run",
                    "--batch-size",
                    "5",
                    "--n-steps",
                    "16",
                    "--no-progress",
                ]
            )
            == 0
        ), spelling
    assert "resuming: 4 of 5 batches already done" in capsys.readouterr().err
    after = json.loads((out / "manifest.json").read_text())
    assert after["parameters"] == before["parameters"] and after["params_hash"] == before["params_hash"]
    assert torch.equal(load_attributions(out).attributions, load_attributions(_attribute(npz, "ref")).attributions)


@pytest.mark.parametrize("largest", [0.1, 1e39, 1.0000001, float("nan")])
def test_summary_keeps_the_largest_delta_exactly(tmp_path, largest):
    # float64 deltas over two shards, the largest |delta| in the first: it must come back as it is (not rounded to
    # float32, not overflowing to inf), and a NaN must not be dropped for the finite value after it.
    from safetensors.torch import save_file

    from integrad.app import jobs as datasets

    (tmp_path / datasets.MANIFEST).write_text(json.dumps({"n_batches": 2}))
    save_file({"deltas": torch.tensor([largest, -0.001], dtype=torch.float64)}, str(tmp_path / datasets._shard_name(0)))
    save_file({"deltas": torch.tensor([0.001], dtype=torch.float64)}, str(tmp_path / datasets._shard_name(1)))
    got = datasets.summarize(tmp_path)
    assert got["examples"] == 3 and got["shards"] == 2
    assert got["max_abs_delta"] == largest or (largest != largest and got["max_abs_delta"] != got["max_abs_delta"])


def test_the_public_path_keeps_its_names():
    import integrad.app.files
    import integrad.app.jobs
    import integrad.datasets

    names = {
        "AttributionSet",
        "Attributor",
        "BASELINE_NAMES",
        "attribute_dataset",
        "load_attributions",
        "summarize",
        "make_baselines",
        "check_seed",
        "atomic_write_bytes",
        "save_tensors",
    }
    assert set(integrad.datasets.__all__) == names
    for name in names:
        home = integrad.app.files if name in ("atomic_write_bytes", "save_tensors") else integrad.app.jobs
        assert getattr(integrad.datasets, name) is getattr(home, name), name
