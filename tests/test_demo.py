"""``integrad demo --quick``: it runs offline and writes a complete, consistent report."""

from __future__ import annotations

import contextlib
import io
import re
from html.parser import HTMLParser

import pytest
import torch
from safetensors.torch import load_file

from integrad.app.cli import main
from integrad.app.demo import text_available


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tables, self.headers = [], 0, []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.refs.append(attrs["src"])
        if tag == "a":
            self.refs.append(attrs["href"])
        if tag == "table":
            self.tables += 1
        self._in_th = tag == "th"

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)

    def handle_endtag(self, tag):
        self._in_th = False


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    rng_before = torch.random.get_rng_state()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    # The demo seeds its own training and leaves the caller's random state alone.
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    return out, printed.getvalue()


@pytest.fixture
def report(demo_run):
    return demo_run[0]


def test_report_files(report, capsys):
    html = (report / "index.html").read_text()
    parser = _Refs()
    parser.feed(html)
    for ref in parser.refs:
        assert (report / ref).is_file(), ref
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert "digits-integrand.png" in pngs and "cancer-global.png" in pngs
    assert any(p.startswith("digits-example-") for p in pngs)
    for p in pngs:
        assert (report / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{p}"' in html
    assert {"digits-attributions.safetensors", "cancer-attributions.safetensors"} <= {
        p.name for p in report.glob("*.safetensors")
    }
    for header in ("delta", "steps", "abpc", "infidelity", "complexity", "label"):
        assert any(header in h for h in parser.headers), header
    assert parser.tables >= 2
    assert not re.search(r"Traceback|Error:", html)


def test_digits_include_a_misclassified_example(report):
    saved = load_file(str(report / "digits-attributions.safetensors"))
    # The quick model is weak enough to make mistakes; the first example shown is one of them.
    assert int(saved["labels"][0]) != int(saved["targets"][0])
    assert saved["attributions"].shape == saved["inputs"].shape
    assert saved["inputs"].shape[1:] == (1, 8, 8)
    # n_steps="auto" chose per-example step counts that are recorded.
    assert (saved["steps"] > 1).all()


def test_cancer_attributions_cover_the_test_set(report):
    saved = load_file(str(report / "cancer-attributions.safetensors"))
    n = saved["test_indices"].numel()
    assert saved["attributions"].shape == (n, 30)
    assert saved["deltas"].shape == (n,)
    # The auto rule's tolerance (2e-2 in quick mode) bounds the completeness gap relative to the output change.
    assert saved["deltas"].abs().max() < 0.5


def test_minilm_part_is_consistent(report):
    # The test extra installs transformers and the MiniLM package, so the demo's text part must have run.
    assert text_available()
    saved = load_file(str(report / "minilm-attributions.safetensors"))
    html = (report / "index.html").read_text()
    assert "guitar" in (report / "minilm-tokens.html").read_text() and "guitar" in html
    for k in (1, 2):
        ids, base = saved[f"input_ids_{k}"], saved[f"baseline_ids_{k}"]
        assert saved[f"attributions_{k}"].shape == (ids.numel(), 384)
        # Baseline: pad id where words are, [CLS]/[SEP] kept.
        assert base[0] == ids[0] and base[-1] == ids[-1] and (base[1:-1] == 0).all()
        # The delta is, by definition, Σ attributions − (F(x) − F(x′)), with F the cosine similarity.
        gain = saved[f"similarity_{k}"] - saved[f"baseline_similarity_{k}"]
        assert torch.allclose(saved[f"attributions_{k}"].sum(), gain[0] + saved[f"deltas_{k}"][0], atol=1e-4)
    # The two directions explain the same similarity.
    assert torch.allclose(saved["similarity_1"], saved["similarity_2"], atol=1e-5)


def test_demo_prints_where_the_report_is(demo_run):
    report, printed = demo_run
    assert f"Report written to {(report / 'index.html').resolve()}" in printed
    assert "accuracy" in printed
    # The report is assembled beside the output folder and moved in at the end: no staging folder is left.
    assert [p.name for p in report.parent.iterdir()] == ["report"]
