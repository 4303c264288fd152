"""Discretized Integrated Gradients (Sanyal & Ren 2021): a path through the words of a vocabulary, from a baseline
token's embedding to each input token's embedding, with every step monotonic in every dimension."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from .. import arguments
from ..paths import DiscretePath
from .base import PathAttribution, keeps_model_state, output_probe, restore_structure

TensorOrTuple = Tensor | tuple[Tensor, ...]

STRATEGIES = ("greedy", "maxcount")

#: Nearest neighbours already found, per embedding matrix (by identity, while it lives, and until it is written to):
#: ``id(matrix) -> (version, {n_neighbors: {word: neighbours}})``.
_NEIGHBOURS: dict[int, tuple[int, dict[int, dict[int, Tensor]]]] = {}

#: Query rows per distance computation (a chunk's distances to the whole vocabulary are held at once).
_QUERY_CHUNK = 256
#: Candidates beyond ``n_neighbors`` whose exact distances are compared before the nearest are kept.
_MARGIN = 16


def _neighbour_cache(matrix: Tensor, n_neighbors: int) -> dict[int, Tensor]:
    key = id(matrix)
    entry = _NEIGHBOURS.get(key)
    if entry is None:
        weakref.finalize(matrix, _NEIGHBOURS.pop, key, None)
    if entry is None or entry[0] != matrix._version:
        entry = (matrix._version, {})
        _NEIGHBOURS[key] = entry
    return entry[1].setdefault(n_neighbors, {})


def monotonic_dims(anchor: Tensor, baseline: Tensor, current: Tensor) -> Tensor:
    """Where ``anchor`` lies between ``current`` and ``baseline`` (inclusive; equal to both where they are equal):
    the dimensions in which a step from ``current`` to ``anchor`` moves monotonically towards the baseline."""
    return (
        ((baseline > current) & (baseline >= anchor) & (anchor >= current))
        | ((baseline < current) & (baseline <= anchor) & (anchor <= current))
        | ((baseline == current) & (anchor == current))
    )


def monotonised(anchor: Tensor, baseline: Tensor, current: Tensor, n_steps: int) -> Tensor:
    """``anchor`` with each dimension that is not monotonic moved to ``current − (current − baseline) / n_steps``."""
    step = current - (1.0 / n_steps) * (current - baseline)
    return torch.where(monotonic_dims(anchor, baseline, current), anchor, step)


class MonotonicPath(DiscretePath):
    """The path :class:`MonotonicPathBuilder` builds: ``points`` ``(n_steps, *ids.shape, dim)`` from the baseline's
    embedding (point 0) to the input's (the last point), a :class:`~integrad.paths.DiscretePath` over the embeddings.

    Attributes
    ----------
    word_ids : Tensor
        ``(n_steps, *ids.shape)``: the vocabulary word each point was made from (the baseline, the anchors, the
        input). A point is the word's embedding, monotonised towards the baseline.
    """

    def __init__(self, points: Tensor, word_ids: Tensor):
        super().__init__(points)
        self.word_ids = word_ids


class MonotonicPathBuilder:
    r"""Builds the monotonic paths of Discretized Integrated Gradients through a vocabulary's embeddings.

    For each token, starting from the input word ``w_0``, each step picks an anchor word ``a`` among the
    ``n_neighbors`` nearest words (Euclidean) of the current word ``w_j``, not yet on the path and not the baseline
    word ``b``:

    * ``"greedy"``: the anchor closest to its monotonised self, ``min_a ‖a − m(a)‖``, where ``m(a)`` moves every
      dimension of ``a`` that does not lie between ``e(w_j)`` and ``e(b)`` to ``e(w_j) − (e(w_j) − e(b)) / n_steps``;
    * ``"maxcount"``: the anchor with the most dimensions between ``e(w_j)`` and ``e(b)``,

    nearest first among equals. The path's points are the anchors monotonised in turn, each between the previous
    point and the baseline: ``p_0 = e(w_0)``, ``p_{j+1} = m(e(a_{j+1}); p_j)``; the baseline's embedding ends it. The
    path is returned from the baseline to the input. A token in ``special_token_ids`` keeps its own embedding at
    every point but the baseline.

    The nearest neighbours of a word are computed with torch when a path first reaches it, and cached for the
    embedding matrix (shared by every builder of the same matrix, dropped when the matrix is written to).

    Parameters
    ----------
    embeddings : Tensor or torch.nn.Embedding
        The vocabulary's embedding matrix ``(vocabulary, dim)`` (scaled as the model scales it).
    n_neighbors : int, default 50
        Candidate anchors per step.
    strategy : {"greedy", "maxcount"}, default "greedy"
        How the anchor is chosen among them.
    special_token_ids : iterable of int or 1-D integer Tensor, default ()
        Tokens (padding, separators) whose path does not go through other words.

    References
    ----------
    Sanyal, Ren. Discretized Integrated Gradients for Explaining Language Models. EMNLP 2021.
    https://arxiv.org/abs/2108.13654
    """

    def __init__(
        self,
        embeddings: Tensor | nn.Embedding,
        n_neighbors: int = 50,
        strategy: str = "greedy",
        special_token_ids: Iterable[int] = (),
    ):
        matrix = _embedding_matrix(embeddings)
        vocabulary = matrix.shape[0]
        self.n_neighbors = arguments.check_positive_int("n_neighbors", n_neighbors, allow_none=False)
        if self.n_neighbors >= vocabulary:
            raise ValueError(
                f"n_neighbors must be smaller than the vocabulary ({vocabulary} words); got {self.n_neighbors}"
            )
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        self.strategy = strategy
        self._matrix = matrix
        self.embeddings = matrix.detach()
        self._squared_norms: tuple[int, Tensor] | None = None
        if isinstance(special_token_ids, Tensor):
            if special_token_ids.is_floating_point() or special_token_ids.is_complex() or special_token_ids.dim() > 1:
                raise TypeError(
                    f"special_token_ids must be ints or a 1-D integer tensor; got a {special_token_ids.dtype} tensor "
                    f"of shape {tuple(special_token_ids.shape)}"
                )
            special_token_ids = special_token_ids.tolist()
        specials = list(special_token_ids)
        if not all(arguments.is_int(t) for t in specials):
            raise TypeError(f"special_token_ids must hold ints (or be a 1-D integer tensor); got {specials!r}")
        self.special_token_ids = _checked_ids(
            "special_token_ids", torch.tensor(specials, dtype=torch.long), vocabulary
        ).to(self.embeddings.device)

    @property
    def vocabulary(self) -> int:
        return self.embeddings.shape[0]

    def neighbors(self, token_ids: Tensor) -> Tensor:
        """The ``n_neighbors`` nearest words of each token (itself excluded), nearest first: ``(N, n_neighbors)``."""
        ids = _checked_ids("token_ids", token_ids, self.vocabulary).reshape(-1).to(self.embeddings.device)
        cache = _neighbour_cache(self._matrix, self.n_neighbors)
        missing = sorted({int(t) for t in ids.tolist()} - cache.keys())
        for first in range(0, len(missing), _QUERY_CHUNK):
            words = torch.tensor(missing[first : first + _QUERY_CHUNK], device=self.embeddings.device)
            cache.update(zip(words.tolist(), self._nearest(words)))
        if ids.numel() == 0:
            return torch.empty((0, self.n_neighbors), dtype=torch.long, device=self.embeddings.device)
        return torch.stack([cache[int(t)] for t in ids.tolist()])

    def _nearest(self, words: Tensor) -> Tensor:
        """The ``n_neighbors`` nearest words of each of ``words``, nearest first.

        Candidates come from ``‖e‖² − 2 q·e`` (one matrix product with the whole vocabulary), with a margin; their
        order is then settled on the distances computed from differences, which the expansion of the square rounds
        too coarsely to order near neighbours exactly.
        """
        e = self.embeddings
        if self._squared_norms is None or self._squared_norms[0] != self._matrix._version:
            self._squared_norms = (self._matrix._version, e.pow(2).sum(1))
        queries = e.index_select(0, words)
        scores = torch.addmm(self._squared_norms[1].unsqueeze(0), queries, e.t(), alpha=-2)
        scores[torch.arange(len(words), device=words.device), words] = float("inf")
        wanted = min(self.n_neighbors + _MARGIN, self.vocabulary - 1)
        candidates = scores.topk(wanted, dim=1, largest=False, sorted=True).indices
        distances = (e[candidates] - queries.unsqueeze(1)).pow(2).sum(-1).sqrt()
        order = torch.sort(distances, dim=1, stable=True).indices[:, : self.n_neighbors]
        return candidates.gather(1, order)

    def build(self, input_ids: Tensor, baseline_ids: int | Tensor, n_steps: int = 30) -> MonotonicPath:
        """The monotonic path of every token of ``input_ids`` from its baseline token.

        Parameters
        ----------
        input_ids : Tensor
            Token ids, ``(batch, ...)`` (usually ``(batch, length)``).
        baseline_ids : int or Tensor
            The baseline token of every position: one id for all (e.g. the [PAD] or [MASK] id) or ids broadcastable
            to ``input_ids``.
        n_steps : int, default 30
            Points of the path, both ends included (at least 2).

        Returns
        -------
        MonotonicPath
            Points ``(n_steps, *input_ids.shape, dim)`` in the embeddings' dtype, from the baseline to the input.
        """
        ids = _checked_ids("input_ids", input_ids, self.vocabulary).to(self.embeddings.device)
        if ids.dim() == 0:
            raise ValueError("input_ids must have a batch dimension (dim 0 = examples); got a 0-d tensor")
        base = _checked_ids("baseline_ids", torch.as_tensor(baseline_ids), self.vocabulary).to(ids.device)
        try:
            base = base.expand(ids.shape)
        except RuntimeError:
            raise ValueError(
                f"baseline_ids of shape {tuple(base.shape)} does not broadcast to input_ids of shape "
                f"{tuple(ids.shape)}; give one id or ids shaped like input_ids"
            ) from None
        if not arguments.is_int(n_steps) or n_steps < 2:
            raise ValueError(f"n_steps must be an int >= 2 (the path's points, both ends included); got {n_steps!r}")
        words = self._word_path(ids.reshape(-1), base.reshape(-1), int(n_steps))
        points = self._points(words, base.reshape(-1), int(n_steps))
        shape = tuple(ids.shape)
        word_ids = torch.cat([base.reshape(1, -1), words.flip(0)])
        return MonotonicPath(points.flip(0).reshape((n_steps,) + shape + (-1,)), word_ids.reshape((n_steps,) + shape))

    def _word_path(self, ids: Tensor, base: Tensor, n_steps: int) -> Tensor:
        """``(n_steps − 1, N)`` words from each input word (row 0) through its anchors."""
        special = torch.isin(ids, self.special_token_ids)
        path = [ids]
        for _ in range(n_steps - 2):
            following = self._next_anchor(path[-1], base, torch.stack(path), special, n_steps)
            path.append(torch.where(special, ids, following))
        return torch.stack(path)

    def _next_anchor(self, current: Tensor, base: Tensor, visited: Tensor, special: Tensor, n_steps: int) -> Tensor:
        """Each token's next anchor: the best candidate by the strategy among the current word's neighbours that are
        neither on the path yet nor the baseline; the baseline once the path has reached it or has no candidate."""
        chosen = base.clone()
        active = torch.nonzero((current != base) & ~special).squeeze(1)
        # A few hundred tokens at a time: their candidates' embeddings are held together.
        for rows in active.split(_QUERY_CHUNK):
            chosen[rows] = self._best_candidate(current[rows], base[rows], visited[:, rows], n_steps)
        return chosen

    def _best_candidate(self, current: Tensor, base: Tensor, visited: Tensor, n_steps: int) -> Tensor:
        candidates = self.neighbors(current)
        e = self.embeddings
        anchors = e[candidates]
        at_word, at_base = e[current].unsqueeze(1), e[base].unsqueeze(1)
        if self.strategy == "greedy":
            score = (anchors - monotonised(anchors, at_base, at_word, n_steps)).pow(2).sum(-1).sqrt()
        else:
            score = -monotonic_dims(anchors, at_base, at_word).sum(-1).to(e.dtype)
        taken = (candidates.unsqueeze(-1) == visited.t().unsqueeze(1)).any(-1) | (candidates == base.unsqueeze(1))
        score = score.masked_fill(taken, float("inf"))
        # argmin takes the first of equal scores: the nearest of equally good anchors.
        best = candidates.gather(1, score.argmin(1, keepdim=True)).squeeze(1)
        return torch.where(taken.all(1), base, best)

    def _points(self, words: Tensor, base: Tensor, n_steps: int) -> Tensor:
        """``(n_steps, N, dim)`` from the input's embedding (row 0), each anchor monotonised between the previous
        point and the baseline, to the baseline's embedding (the last row)."""
        e = self.embeddings
        at_base = e[base]
        points = [e[words[0]]]
        for anchor in words[1:]:
            points.append(monotonised(e[anchor], at_base, points[-1], n_steps))
        points.append(at_base)
        return torch.stack(points)


def _embedding_matrix(embeddings: Any) -> Tensor:
    matrix = embeddings.weight if isinstance(embeddings, nn.Embedding) else embeddings
    if not isinstance(matrix, Tensor) or matrix.dim() != 2 or not matrix.is_floating_point():
        got = (
            f"a tensor of shape {tuple(matrix.shape)} and dtype {matrix.dtype}"
            if isinstance(matrix, Tensor)
            else type(matrix).__name__
        )
        raise TypeError(
            f"embeddings must be a floating-point tensor (vocabulary, dim) or a torch.nn.Embedding; got {got}"
        )
    if matrix.shape[0] < 2:
        raise ValueError(f"embeddings must hold at least two words; got {matrix.shape[0]}")
    return matrix


def _checked_ids(name: str, ids: Any, vocabulary: int) -> Tensor:
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        got = f"a tensor of dtype {ids.dtype}" if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"{name} must hold integer token ids (an int or an integer tensor); got {got}")
    if ids.numel():
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocabulary:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} holds token id {bad}, outside the vocabulary of {vocabulary} embeddings (ids 0 to "
                f"{vocabulary - 1})"
            )
    return ids.long()


class DiscretizedIntegratedGradients(PathAttribution):
    r"""Discretized integrated gradients: ``A = Σ_{k<K} ∇F(x_k) ⊙ (x_{k+1} − x_k)`` along a path of points
    ``x_0 … x_K`` in embedding space, from the baseline's embeddings to the inputs'.

    The path is usually a :class:`MonotonicPath` from :class:`MonotonicPathBuilder`: words of the vocabulary,
    monotonised, instead of the straight line whose points lie between words. The attributions add up to
    ``F(x_K) − F(x_0)`` as the steps shrink (the left-point sum is exact for a model linear along each step).

    Every example's path is its own: the result for an example does not depend on the rest of its batch.

    Parameters
    ----------
    forward_func : callable
        The model from embeddings, called as ``forward_func(*embeddings, *additional_forward_args)``.

    References
    ----------
    Sanyal, Ren. Discretized Integrated Gradients for Explaining Language Models. EMNLP 2021.
    https://arxiv.org/abs/2108.13654
    """

    def __init__(self, forward_func: Callable):
        super().__init__(forward_func, multiply_by_inputs=True)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        path: DiscretePath | TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: Literal[False] = False,
        *,
        memory_budget: int | str | None = None,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        path: DiscretePath | TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
        internal_batch_size: int | None = None,
        *,
        return_convergence_delta: Literal[True],
        memory_budget: int | str | None = None,
    ) -> tuple[TensorOrTuple, Tensor]: ...

    @keeps_model_state
    def attribute(
        self,
        inputs,
        path,
        target=None,
        additional_forward_args=None,
        internal_batch_size=None,
        return_convergence_delta=False,
        *,
        memory_budget=None,
    ):
        """Attribute the output at ``target`` along ``path``.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            The embeddings attributed, ``(batch, ...)``: the shapes and dtypes of the path's points and of the
            attributions (the path should end at them).
        path : MonotonicPath, DiscretePath, Tensor or tuple of Tensor
            The points ``(K + 1, batch, ...)``, from the baseline to the inputs: a path from
            :meth:`MonotonicPathBuilder.build`, any :class:`~integrad.paths.DiscretePath`, or the points themselves.
        return_convergence_delta : bool, default False
            Also return ``Σ attributions − (F(x_K) − F(x_0))`` per example.

        Notes
        -----
        ``target``, ``additional_forward_args``, ``internal_batch_size`` and ``memory_budget`` are those of
        :meth:`integrad.IntegratedGradients.attribute`.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``: one value per example.
        """
        return_convergence_delta = arguments.check_bool("return_convergence_delta", return_convergence_delta)
        inputs_t, was_tuple = arguments.normalize_inputs(inputs)
        device = inputs_t[0].device
        settings = self._rule_settings(1, "riemann_left", internal_batch_size, memory_budget, 1e-3, device)
        points = _discrete_path(path, inputs_t)
        batch = inputs_t[0].shape[0]
        target_t = arguments.normalize_target(target, batch, device)
        args, per_example = arguments.normalize_additional_args(additional_forward_args, batch)
        probe = output_probe(self.forward_func, lambda points, examples: points, target_t, args, per_example)
        result = self._integrate(probe, points, settings, need_ends=return_convergence_delta)
        attributions = restore_structure(self._finish(result, [x.dtype for x in inputs_t]), was_tuple)
        if return_convergence_delta:
            return attributions, self.last_report.delta
        return attributions


def _discrete_path(path: Any, inputs: tuple[Tensor, ...]) -> DiscretePath:
    """``path`` as a DiscretePath over tensors shaped, typed and placed like ``inputs``."""
    if isinstance(path, (Tensor, tuple)):
        path = DiscretePath(path)
    if not isinstance(path, DiscretePath):
        raise TypeError(
            "path must be a MonotonicPath (MonotonicPathBuilder.build), an integrad.paths.DiscretePath, or its points "
            f"(a tensor, or a tuple of tensors, shaped (K + 1, batch, ...)); got {type(path).__name__}"
        )
    shapes = [tuple(p.shape[1:]) for p in path.sequence]
    if shapes != [tuple(x.shape) for x in inputs]:
        raise ValueError(
            f"path has points of shapes {shapes} (after the K + 1 positions), but the inputs have shapes "
            f"{[tuple(x.shape) for x in inputs]}; build the path for these inputs"
        )
    if all(p.dtype == x.dtype and p.device == x.device for p, x in zip(path.sequence, inputs)):
        return path
    return DiscretePath(tuple(p.to(device=x.device, dtype=x.dtype) for p, x in zip(path.sequence, inputs)))
