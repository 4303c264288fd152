"""The documentation site's code, executed as written.

Every ```python block of ``docs/**/*.md`` runs, in page order, one namespace per page, in a fresh temporary working
directory (``MPLBACKEND=Agg``, ``HF_HUB_OFFLINE=1``). A block may include a file with the site's snippet syntax
(``--8<-- "docs/snippets/digits_cnn.py"``), which the site shows in full. A block made only of such lines, naming
only the model snippets of ``MODELS``, is a setup block: it trains or loads a model and runs once per test session,
its names (and the random generators' state after it) reused by every later page that includes the same files.

Where a page states what a block gives, in a block headed ``title="Output"`` right after it, the block's printed
output is compared with it: the text must match (whitespace aside) and every number must agree to the precision
printed (one unit of its last digit), or within ``atol + rtol·|stated|`` more where an
``<!-- docs-test: rtol=R atol=A -->`` comment before the output block allows it (a result that depends on how a
model's training rounded, or on a random search).

Shell commands (```bash blocks) run in the page's working directory when they start with one of ``RUN`` (they
need only local files, which earlier blocks of the page wrote): ``integrad`` commands in this process, through the
function the console script calls, the others through the shell. The rest are listed in ``NOT_RUN`` with the
reason, and ``test_every_block_is_known`` fails for a command that is neither, or a block in another language.

The pictures of the method pages are drawn by the scripts in ``docs/scripts``: ``test_pictures_have_scripts``
checks that every picture a page shows exists and is written by a script there.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>`{3,})\s*(?P<language>[\w+-]*)\s*(?P<info>.*)$")
SNIPPET = re.compile(r'^\s*--8<--\s+"(?P<path>[^"]+)"\s*$')
DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<options>.*?)\s*-->\s*$")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")

# Shell commands of the site that are not run here, with the reason.
NOT_RUN = {
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu": "installs PyTorch",
    'pip install -e ".[demo]"': "installs the package",
    'pip install -e ".[docs]"': "installs the documentation tools",
    'pip install -e ".[bench]"': "installs the benchmarks' reference libraries",
    "integrad demo": "trains and explains three models; tests/test_demo.py runs the demo with --quick",
    "integrad demo --quick --out quick-report": "the demo at its smallest; tests/test_demo.py runs it",
    "python -m benchmarks.run --markdown BENCHMARKS.md": "every benchmark workload against captum: minutes",
    "python -m benchmarks.run --quick": "fewer rounds of every workload: about two minutes",
    "python -m benchmarks.run --only mlp,cnn": "two workloads against captum: a minute",
    "python -m benchmarks.run --render results.json --markdown BENCHMARKS.md": "needs a results file of a run",
    "python -m benchmarks.profile mlp --side integrad": "a profile of one workload: prints timings only",
    "mkdocs serve": "serves the site until stopped",
    "mkdocs build --strict -d site": "builds the site: a step of its own, not a test",
    "python docs/scripts/make_images.py": "draws every picture of the site again: minutes",
    (
        "torchrun --nproc_per_node 2 -m integrad attribute-dataset --model mypackage.models:classifier "
        "--data digits.npz --out attributions-2 --batch-size 32 --no-progress"
    ): "starts two processes: tests/test_jobs.py checks that two processes give the result of one",
    (
        "torchrun --nnodes 2 --node_rank 0 --nproc_per_node 2 --master_addr node0.example --master_port 29500 "
        "-m integrad attribute-dataset --model mypackage.models:classifier --data digits.npz --out /shared/attributions"
    ): "needs two machines",
}
# The snippets that train or load a model: run once per session (they write no files).
MODELS = (
    "docs/snippets/digits_cnn.py",
    "docs/snippets/cancer_mlp.py",
    "docs/snippets/minilm.py",
    "docs/snippets/tiny_gpt2.py",
)
RUN = ("integrad --help", "integrad explain ", "integrad explain-text ", "integrad attribute-dataset ")


@dataclass
class Block:
    page: Path
    language: str
    info: str
    source: str  # as the page writes it
    code: str  # with the snippet files it names
    line: int  # page line of the block's first code line
    options: dict = field(default_factory=dict)
    snippets: tuple[str, ...] = ()
    output: Block | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_output(self) -> bool:
        return 'title="Output"' in self.info

    @property
    def is_setup(self) -> bool:
        lines = [line for line in self.source.splitlines() if line.strip()]
        return bool(self.snippets) and set(self.snippets) <= set(MODELS) and all(SNIPPET.match(line) for line in lines)


def _expand(code: str) -> tuple[str, tuple[str, ...]]:
    """The code with every snippet line replaced by the file it names, and the files."""
    lines, files = [], []
    for line in code.splitlines():
        match = SNIPPET.match(line)
        if match:
            files.append(match["path"])
            lines.append((ROOT / match["path"]).read_text(encoding="utf-8").rstrip("\n"))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n", tuple(files)


def _blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, each output block attached to the block before it."""
    blocks: list[Block] = []
    fence = None
    options: dict = {}
    lines = page.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if fence is None:
            match = FENCE.match(line)
            directive = DIRECTIVE.match(line)
            if directive:
                options = dict(item.split("=", 1) for item in directive["options"].split())
            elif match:
                fence, body, start = match, [], number + 1
            elif line.strip():
                options = {}
            continue
        indent = fence["indent"]
        if line.strip() == fence["ticks"] and line.startswith(indent):
            source = "\n".join(body) + "\n"
            code, snippets = _expand(source)
            block = Block(page, fence["language"], fence["info"], source, code, start, options, snippets)
            if block.is_output:
                assert blocks and _adjacent(lines, blocks[-1], start), (
                    f"{block.where}: an output block follows no block"
                )
                blocks[-1].output = block
            else:
                blocks.append(block)
            fence, options = None, {}
        else:
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
    assert fence is None, f"{page}: ends inside a code block"
    return blocks


def _adjacent(lines: list[str], previous: Block, start: int) -> bool:
    """Whether only blank lines and directives lie between the end of ``previous`` and the fence before ``start``."""
    end = previous.line + len(previous.source.splitlines())  # the closing fence's line number
    between = lines[end : start - 2]
    return all(not line.strip() or DIRECTIVE.match(line) for line in between)


PAGES = sorted(DOCS.rglob("*.md"))
BLOCKS = {page: _blocks(page) for page in PAGES}
RUNNABLE = [page for page, blocks in BLOCKS.items() if any(b.language in ("python", "bash") for b in blocks)]


def _commands(block: Block) -> list[str]:
    """The shell commands of a block: lines joined across a trailing backslash, comments and blanks left out."""
    joined = re.sub(r"\\\n\s*", "", block.code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_every_block_is_known():
    assert RUNNABLE, "no page of docs/ has code"
    for blocks in BLOCKS.values():
        for block in blocks:
            assert block.language in ("python", "bash", "text"), f"{block.where}: unexpected block {block.language!r}"
            if block.language == "bash":
                for command in _commands(block):
                    assert command in NOT_RUN or command.startswith(RUN), (
                        f"{block.where}: command {command!r} is neither run here nor listed in NOT_RUN"
                    )
            if block.output is not None:
                assert block.language in ("python", "bash"), f"{block.output.where}: output of a {block.language} block"
    used = {c for blocks in BLOCKS.values() for b in blocks if b.language == "bash" for c in _commands(b)}
    assert not set(NOT_RUN) - used, f"NOT_RUN lists commands no page has: {sorted(set(NOT_RUN) - used)}"


def test_pictures_have_scripts():
    scripts = "\n".join(p.read_text(encoding="utf-8") for p in (DOCS / "scripts").glob("*.py"))
    for page in PAGES:
        for picture in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", page.read_text(encoding="utf-8")):
            path = (page.parent / picture).resolve()
            assert path.is_file(), f"{page.relative_to(ROOT)} shows {picture}, which does not exist"
            if page.parent.name == "methods":
                assert f'"{path.name}"' in scripts, f"no script in docs/scripts writes {path.name}"


# ------------------------------------------------------------------------------------------------- output checks


def _skeleton(text: str) -> str:
    return re.sub(r"\s+", "", NUMBER.sub("#", text))


def _decimals(number: str) -> float:
    """One unit of the last digit printed: ``0.0001`` for ``1.5000``, ``1e-05`` for ``1.23e-04``; nothing for an
    integer, which must match exactly."""
    if not re.search(r"[.eE]", number):
        return 0.0
    mantissa, _, exponent = number.lower().partition("e")
    digits = len(mantissa.partition(".")[2])
    return 10.0 ** (-digits + (int(exponent) if exponent else 0))


def _assert_output(block: Block, printed: str) -> None:
    stated = block.output.code
    assert _skeleton(printed) == _skeleton(stated), (
        f"{block.output.where}: the page states\n{stated}\nthe code prints\n{printed}"
    )
    rtol = float(block.output.options.get("rtol", 0))
    atol = float(block.output.options.get("atol", 0))
    for got, want in zip(NUMBER.findall(printed), NUMBER.findall(stated)):
        a, b = float(got), float(want)
        allowed = _decimals(want) + atol + rtol * abs(b)
        assert math.isclose(a, b, rel_tol=0, abs_tol=allowed * (1 + 1e-9)), (
            f"{block.output.where}: the page states {want}, the code prints {got}\n{printed}"
        )


# ------------------------------------------------------------------------------------------------- running pages

_SETUP: dict[tuple[str, ...], tuple[dict, tuple]] = {}


def _random_state() -> tuple:
    return torch.random.get_rng_state(), np.random.get_state(), random.getstate()


def _set_random_state(state: tuple) -> None:
    torch.random.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


def _execute(block: Block, namespace: dict) -> str:
    """Run a python block in ``namespace``; tracebacks point at the page's own lines (up to a snippet's, which are
    counted from its include line). Returns what the block printed."""
    code = compile("\n" * (block.line - 1) + block.code, str(block.page), "exec")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, namespace)
    return printed.getvalue()


def _setup(block: Block, namespace: dict) -> str:
    """A setup block: run once per session, then its names and the random state after it are reused."""
    if block.snippets not in _SETUP:
        fresh: dict = {}
        printed = _execute(block, fresh)
        _SETUP[block.snippets] = ({k: v for k, v in fresh.items() if k != "__builtins__"}, _random_state(), printed)
    names, state, printed = _SETUP[block.snippets]
    namespace.update(names)
    _set_random_state(state)
    return printed


def _integrad(argv: list[str], where: str) -> str:
    """An ``integrad`` command, run in this process through the console script's own function (the same code,
    without starting an interpreter and importing torch again). Returns what it printed on standard output."""
    from integrad.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # help text is wrapped to the terminal's width: the pages show it at 100
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exit:  # argparse's --help
        code = exit.code
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    assert code in (0, None), f"{where}: integrad {' '.join(argv)}\nexit {code}\n{out.getvalue()}\n{err.getvalue()}"
    return out.getvalue()


def _shell(block: Block, cwd: Path) -> str:
    """Run a bash block's commands that are not in ``NOT_RUN``; returns what they printed on standard output."""
    printed = []
    for command in _commands(block):
        if command in NOT_RUN:
            continue
        argv = shlex.split(command)
        if argv[0] == "integrad":
            printed.append(_integrad(argv[1:], block.where))
            continue
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            MPLBACKEND="Agg",
            OMP_NUM_THREADS="1",
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            PYTHONPATH=os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]),
        )
        result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, (
            f"{block.where}: {command}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
        )
        printed.append(result.stdout)
    return "".join(printed)


@pytest.fixture
def _page_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # a model factory in the page's folder is imported from there
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("MPLBACKEND", "Agg")):
        monkeypatch.setenv(name, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the pages' models are small: one thread is fastest, and the machine may be shared
    try:
        with torch.random.fork_rng(devices=[]):
            state = np.random.get_state(), random.getstate()
            yield tmp_path
            np.random.set_state(state[0])
            random.setstate(state[1])
    finally:
        torch.set_num_threads(threads)
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]
        import matplotlib.pyplot as plt

        plt.close("all")


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(DOCS)) for p in RUNNABLE])
def test_page(page, _page_environment):
    namespace: dict = {"__name__": "__docs__"}
    for block in BLOCKS[page]:
        if block.language == "python":
            printed = _setup(block, namespace) if block.is_setup else _execute(block, namespace)
        elif block.language == "bash":
            printed = _shell(block, _page_environment)
        else:
            continue
        if block.output is not None:
            _assert_output(block, printed)
