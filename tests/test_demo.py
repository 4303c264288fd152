"""``integrad demo --quick``: it runs offline and writes a complete, consistent report."""

from __future__ import annotations

import contextlib
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from integrad.app.cli import main
from integrad.app.demo import DemoConfig, _train_digits, load_minilm, text_available, xrai_available

METHODS = (
    "Integrated Gradients",
    "Blur IG",
    "Guided IG",
    "IDGI (over IG)",
    "Expected Gradients",
    "GradientSHAP",
    "XRAI",
)


class _Page(HTMLParser):
    """The files a page refers to, its in-page links and the ids they may point at, its headings and table cells."""

    def __init__(self):
        super().__init__()
        self.files, self.anchors, self.ids, self.headings, self.headers, self.cells = [], [], set(), [], [], []
        self.tables = 0
        self._open = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.files.append(attrs["src"])
        if tag == "a":
            href = attrs["href"]
            (self.anchors if href.startswith("#") else self.files).append(href)
        if tag == "table":
            self.tables += 1
        self._open = tag

    def handle_data(self, data):
        if self._open == "th":
            self.headers.append(data)
        if self._open == "td":
            self.cells.append(data)
        if self._open == "h2":
            self.headings.append(data)

    def handle_endtag(self, tag):
        self._open = None


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


@pytest.fixture(scope="module")
def page(demo_run):
    parser = _Page()
    parser.feed((demo_run[0] / "index.html").read_text(encoding="utf-8"))
    return parser


def test_report_files(report, page):
    html = (report / "index.html").read_text()
    for ref in page.files:
        assert (report / ref).is_file(), ref
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert "digits-integrand.png" in pngs and "cancer-global.png" in pngs
    assert any(p.startswith("digits-example-") for p in pngs)
    for p in pngs:
        assert (report / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="{p}"' in html
    assert {"digits-attributions.safetensors", "cancer-attributions.safetensors", "digits-methods.safetensors"} <= {
        p.name for p in report.glob("*.safetensors")
    }
    for header in ("delta", "steps", "abpc", "infidelity", "complexity", "label", "time (s)"):
        assert any(header in h for h in page.headers), header
    assert page.tables >= 4
    assert not re.search(r"Traceback|Error:", html)


def test_table_of_contents_links_every_section(page):
    assert page.headings == [
        "1. Handwritten digits: a small CNN",
        "2. Digits: the methods compared",
        "3. Breast cancer: an MLP on 30 standardised features",
        "4. Sentence similarity: pretrained MiniLM",
        "Files",
    ]
    # One link per section and per MiniLM subsection, each to a heading of the page.
    assert len(page.anchors) == len(page.headings) + 2
    assert all(anchor[1:] in page.ids for anchor in page.anchors)


def test_digits_include_a_misclassified_example(report):
    saved = load_file(str(report / "digits-attributions.safetensors"))
    # The quick model is weak enough to make mistakes; the first example shown is one of them.
    assert int(saved["labels"][0]) != int(saved["targets"][0])
    # Its second class is the true label; the others' is another class than the prediction.
    assert int(saved["second_classes"][0]) == int(saved["labels"][0])
    assert (saved["second_classes"] != saved["targets"]).all()
    assert saved["attributions"].shape == saved["inputs"].shape == saved["attributions_second_class"].shape
    assert saved["inputs"].shape[1:] == (1, 8, 8)
    # n_steps="auto" chose per-example step counts that are recorded.
    assert (saved["steps"] > 1).all()


def test_every_method_explains_the_same_digits(report, page):
    assert xrai_available()  # scikit-image is a test dependency: XRAI must be in the comparison
    saved = load_file(str(report / "digits-methods.safetensors"))
    digits = load_file(str(report / "digits-attributions.safetensors"))
    with safe_open(str(report / "digits-methods.safetensors"), "pt") as f:
        names = f.metadata()
    assert [names[f"attributions_{i}"] for i in range(len(METHODS))] == list(METHODS)
    k = DemoConfig.quick().compare_examples
    # The first digits of section 1, at the same targets.
    assert torch.equal(saved["test_indices"], digits["test_indices"][:k])
    assert torch.equal(saved["targets"], digits["targets"][:k])
    for i in range(len(METHODS)):
        assert saved[f"attributions_{i}"].shape == (k, 1, 8, 8)
        assert torch.isfinite(saved[f"attributions_{i}"]).all()
    assert saved["seconds"].shape == (len(METHODS),) and (saved["seconds"] > 0).all()
    # A picture and a table row for each method.
    for name in METHODS:
        slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        assert (report / f"digits-method-{slug}.png").is_file(), name
        assert name in page.cells


def test_compared_integrated_gradients_match_the_formula(report):
    """The comparison's IG against IG written out: Gauss–Legendre nodes on [0, 1], gradients by autograd, float64."""
    saved = load_file(str(report / "digits-methods.safetensors"))
    cfg = DemoConfig.quick()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the demo, so that training gives the same weights
    try:
        with torch.random.fork_rng(devices=[]):
            trained = _train_digits(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    model = trained.model.double()
    rows = [int(np.nonzero(trained.test_rows == int(i))[0][0]) for i in saved["test_indices"]]
    x = trained.x_test[rows].double()
    nodes, weights = np.polynomial.legendre.leggauss(cfg.compare_steps)
    expected = torch.zeros_like(x)
    for node, weight in zip((nodes + 1) / 2, weights / 2):
        point = (node * x).requires_grad_(True)
        output = model(point).gather(1, saved["targets"][:, None]).sum()
        expected += weight * torch.autograd.grad(output, point)[0]
    expected *= x
    assert torch.allclose(saved["attributions_0"].double(), expected, rtol=1e-4, atol=1e-5)


def test_cancer_attributions_cover_the_test_set(report):
    saved = load_file(str(report / "cancer-attributions.safetensors"))
    n = saved["test_indices"].numel()
    assert saved["attributions"].shape == (n, 30)
    assert saved["deltas"].shape == (n,)
    # The auto rule's tolerance (2e-2 in quick mode) bounds the completeness gap relative to the output change.
    assert saved["deltas"].abs().max() < 0.5


@pytest.fixture(scope="module")
def minilm(demo_run):
    # The test extra installs transformers and the MiniLM package, so the demo's text part must have run.
    assert text_available()
    encoder, tokenizer = load_minilm(progress=False)
    return encoder, load_file(str(demo_run[0] / "minilm-attributions.safetensors"))


def _similarity(encoder, ids, reference):
    """Cosine similarity of the mean-pooled MiniLM embedding of each row of ``ids`` (no padding) with ``reference``."""
    with torch.no_grad():
        pooled = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(dim=1)
    return torch.nn.functional.cosine_similarity(pooled, reference[None], dim=-1)


def test_minilm_methods_are_complete_as_each_defines_it(report, minilm):
    encoder, saved = minilm
    html = (report / "index.html").read_text()
    assert "guitar" in (report / "minilm-tokens.html").read_text() and "guitar" in html
    for name in ("IG", "Sequential IG", "Discretized IG"):
        assert name in html
    for k in (1, 2):
        ids, base, reference = saved[f"input_ids_{k}"], saved[f"baseline_ids_{k}"], saved[f"reference_{k}"]
        # Baseline: pad id where words are, [CLS]/[SEP] kept.
        assert base[0] == ids[0] and base[-1] == ids[-1] and (base[1:-1] == 0).all()
        value, at_base = _similarity(encoder, torch.stack([ids, base]), reference)
        assert torch.allclose(saved[f"similarity_{k}"], value.reshape(1), atol=1e-5)
        assert torch.allclose(saved[f"baseline_similarity_{k}"], at_base.reshape(1), atol=1e-5)
        for method in ("ig", "sig", "dig"):
            assert saved[f"{method}_attributions_{k}"].shape == (ids.numel(), 384)
            scores = saved[f"{method}_attributions_{k}"].sum(-1)
            assert torch.allclose(saved[f"{method}_token_scores_{k}"], scores, atol=1e-6)
        # IG and DIG: the delta is, by definition, Σ attributions − (F(x) − F(x′)), with F the cosine similarity.
        for method in ("ig", "dig"):
            total = saved[f"{method}_attributions_{k}"].sum()
            assert torch.allclose(total, value - at_base + saved[f"{method}_deltas_{k}"][0], atol=1e-4)
        # Sequential IG: position i's attributions add up to F(x) − F(x with token i alone at the baseline), plus
        # that position's delta.
        alone = ids.repeat(ids.numel(), 1)
        alone[torch.arange(ids.numel()), torch.arange(ids.numel())] = base
        gains = value - _similarity(encoder, alone, reference)
        per_position = saved[f"sig_attributions_{k}"].sum(-1)
        assert torch.allclose(per_position, gains + saved[f"sig_deltas_{k}"], atol=1e-4)
    # The two directions explain the same similarity.
    assert torch.allclose(saved["similarity_1"], saved["similarity_2"], atol=1e-5)


def test_demo_prints_where_the_report_is(demo_run):
    report, printed = demo_run
    assert f"Report written to {(report / 'index.html').resolve()}" in printed
    assert "accuracy" in printed
    assert "methods compared on" in printed
    # The report is assembled beside the output folder and moved in at the end: no staging folder is left.
    assert [p.name for p in report.parent.iterdir()] == ["report"]
