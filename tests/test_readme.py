"""README.md's code examples, executed as written, and its commands and links checked.

The ```python blocks are read from README.md and run in a fresh temporary working directory, in order, one namespace
per section (a block may use what an earlier block of its section defined). Where the README states what a block
gives (printed values in a comment, a tolerance), that statement is read from the README text and checked against
what the code produced, so the README and the library cannot drift apart unnoticed.

The README's shell commands install packages or run the whole suite, so none is run here: each is listed in
``NOT_RUN`` with the reason, and ``test_every_block_is_covered`` fails when the README gains a block or a command
this file does not know about. The Quickstart's first block is what ``.ci/run`` reads its test command from, and
``test_quickstart_is_the_first_block`` reads it the same way.
"""

from __future__ import annotations

import copy
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

INSTALL_AND_DEMO = 'pip install -e ".[demo]" && integrad demo'
INSTALL_AND_TEST = 'pip install -e ".[test]" && python -m pytest -q'


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
    INSTALL_AND_DEMO: "installs the package; tests/test_demo.py runs the demo",
    INSTALL_AND_TEST: "installs the package and runs the whole suite (.ci/run does, reading it from the README)",
}


@pytest.fixture(autouse=True)
def _workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
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
                assert command in NOT_RUN, f"README.md:{block.line}: command {command!r} is not listed in NOT_RUN"
    # The sections whose python blocks the tests below run, with how many blocks each test expects.
    assert python == {"Switching from captum": 2}
    commands = {c for b in BLOCKS if b.language == "bash" for c in _commands(b)}
    assert commands == set(NOT_RUN), f"NOT_RUN lists commands the README no longer has: {set(NOT_RUN) - commands}"


def test_quickstart_is_the_first_block():
    """The first block holds exactly the two Quickstart commands; ``.ci/run`` takes its second non-blank,
    non-comment line (``awk '/^```/{n++; next} n==1'``) as the test command."""
    first = BLOCKS[0]
    assert first.section == "Quickstart" and first.language == "bash"
    assert _commands(first) == [INSTALL_AND_DEMO, INSTALL_AND_TEST]
    lines, fences = [], 0
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fences += 1
        elif fences == 1 and line.strip() and not line.strip().startswith("#"):
            lines.append(line)
    assert lines[1] == INSTALL_AND_TEST
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "awk '/^```/{n++; next} n==1' README.md" in ci and "sed -n 2p" in ci, ".ci/run reads another line"


def test_links_lead_somewhere():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    assert targets, "README.md has no links"
    for target in targets:
        if "://" in target:
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"


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
    toy, _ = _python("Switching from captum")
    namespace = _run(toy, {})
    import integrad

    assert namespace["IntegratedGradients"] is integrad.IntegratedGradients
    stated = _stated(toy.code, ("attributions", "delta"))
    for name, (printed, value) in stated.items():
        _assert_prints_as(namespace[name], printed, value)

    # "keep the arguments and the results": captum's class, called with the block's own arguments, agrees.
    captum_attr = importlib.import_module("captum.attr")
    call = _literal(toy.code, r"(?s)ig\.attribute\((.*?return_convergence_delta=True),?\s*\)")
    scope = {**namespace, "captum_attr": captum_attr}
    theirs = eval(f"captum_attr.IntegratedGradients(ToyModel()).attribute({call})", scope)
    ours = eval(f"ig.attribute({call})", namespace)
    for a, b in zip(theirs[0], ours[0]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_error_controlled_step_counts():
    toy, auto = _python("Switching from captum")
    namespace = _run(auto, _run(toy, {}))
    tolerance = float(_literal(auto.code, r"tolerance=([0-9.eE+-]+)"))
    ig, model, x, t = namespace["ig"], namespace["model"], namespace["x"], namespace["t"]
    report = ig.last_report
    n = x.shape[0]

    # "path points used, per example"; "estimated relative L1 error ..., per example, below the tolerance".
    assert report.steps.shape == (n,) and bool((report.steps > 0).all()), report.steps
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
