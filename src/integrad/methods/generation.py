"""Attribution of generated text to the prompt, for causal language models."""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import arguments
from ..engine import IntegrationReport, PathIntegral, Rows, WeightedSum, evaluate_rows, run_chunked
from ..paths import StraightLine
from ..probes import check_layer, replaced, run_until, uncompiled, uncompiled_module
from ..rules import alphas_and_weights
from .base import PathAttribution, keeps_model_state

#: What is attributed at each generated position (see :class:`GenerationAttribution`).
SCORES = ("logit", "log_probability", "probability")

#: Rows of a chunk run in one pass, padded to the longest prefix among them, while their prefixes are at least this
#: share of it.
WIDTH_SHARE = 0.75

#: On a CPU, a chunk starts out as the whole positions (all ``n_steps`` rows of each) that reach this many rows: a
#: small model ran slower per row in bigger chunks (caches, page faults), and one position of a few steps leaves the
#: passes' fixed cost dominant. The chunk-size tuning may halve it further (see :mod:`integrad.engine.tuning`).
CPU_CHUNK_ROWS = 32

#: Colours of positive and negative attributions, as :func:`integrad.visualize.text_html` draws them.
_POSITIVE_RGB = (214, 39, 40)
_NEGATIVE_RGB = (31, 119, 180)
#: Whitespace drawn visibly in the heatmap's labels: a token that is a space must not look empty.
_VISIBLE_WHITESPACE = str.maketrans({" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"})


@dataclass
class GenerationAttributions:
    """Attributions of each generated token to the tokens before it.

    With ``P`` prompt tokens and ``T`` generated tokens, generated token ``t`` (0-based) is predicted at position
    ``P + t − 1`` from the ``P + t`` tokens before it: the prompt and the ``t`` generated tokens that precede it.

    Attributes
    ----------
    prompt_ids, generated_ids : Tensor
        ``(P,)`` and ``(T,)`` token ids.
    prompt_attributions : Tensor
        ``(T, P)``: row ``t`` attributes generated token ``t`` to each prompt token (summed over the embedding).
    token_attributions : Tensor
        ``(T, P + T − 1)``: row ``t`` attributes generated token ``t`` to every token of its prefix, the prompt's
        then the generated tokens before it; entries of tokens outside the prefix (column ``P + t`` and beyond) are
        zero. Its first ``P`` columns are :attr:`prompt_attributions`.
    embedding_attributions : Tensor
        ``(T, P + T − 1, d)``: the same per embedding dimension.
    deltas : Tensor
        ``(T,)`` convergence deltas: ``Σ token_attributions[t] − (scores[t] − baseline_scores[t])``.
    scores, baseline_scores : Tensor
        ``(T,)`` float64: the attributed score of each generated token given its prefix, and given the prefix with
        every token replaced by the baseline token.
    score : str
        ``"logit"``, ``"log_probability"`` or ``"probability"``.
    baseline_token_id : int
        The token whose embedding starts every path.
    prompt_tokens, generated_tokens : list of str or None
        Each token decoded on its own, when a tokenizer was given.
    """

    prompt_ids: Tensor
    generated_ids: Tensor
    prompt_attributions: Tensor
    token_attributions: Tensor
    embedding_attributions: Tensor
    deltas: Tensor
    scores: Tensor
    baseline_scores: Tensor
    score: str
    baseline_token_id: int
    prompt_tokens: list[str] | None = None
    generated_tokens: list[str] | None = None

    def to_html(self, include_generated: bool = False, title: str | None = None) -> str:
        """An HTML table of the attributions: prompt tokens across, generated tokens down.

        A cell is red for a positive attribution and blue for a negative one, its opacity ``|value| / max |value|``
        over the table; the value is in the cell's ``title`` (shown on hover), the delta of each row in the last
        column. Token strings are escaped; spaces, newlines and tabs are drawn as ``␣``, ``↵`` and ``⇥``.

        Parameters
        ----------
        include_generated : bool, default False
            Add columns for the generated tokens that serve as context of later ones (cells outside a row's prefix
            stay blank).
        title : str, optional
            A caption above the table (escaped).

        Returns
        -------
        str
            A self-contained ``<table>`` fragment with inline styles only.
        """
        include_generated = arguments.check_bool("include_generated", include_generated)
        matrix = self.token_attributions if include_generated else self.prompt_attributions
        values = matrix.detach().to(device="cpu", dtype=torch.float64)
        n_prompt = self.prompt_ids.shape[0]
        columns = _labels(self.prompt_tokens, self.prompt_ids)
        rows = _labels(self.generated_tokens, self.generated_ids)
        if include_generated:
            columns += rows[: values.shape[1] - n_prompt]
        scale = float(values.abs().max()) if values.numel() else 0.0
        parts = ['<table class="integrad-generation" style="border-collapse: collapse; font-family: monospace;">']
        if title is not None:
            parts.append(f"<caption>{html.escape(str(title), quote=True)}</caption>")
        header = "".join(f'<th style="padding: 0.2em 0.4em;">{label}</th>' for label in columns)
        parts.append(f'<thead><tr><th></th>{header}<th style="padding: 0.2em 0.4em;">&Delta;</th></tr></thead>')
        parts.append("<tbody>")
        for t, label in enumerate(rows):
            cells = "".join(
                _cell(float(values[t, j]), scale) if j < n_prompt + t else "<td></td>" for j in range(values.shape[1])
            )
            delta = f'<td style="padding: 0.2em 0.4em; color: #666;">{float(self.deltas[t]):.2e}</td>'
            parts.append(f'<tr><th style="padding: 0.2em 0.4em; text-align: right;">{label}</th>{cells}{delta}</tr>')
        parts.append("</tbody></table>")
        return "\n".join(parts)


def _labels(tokens: list[str] | None, ids: Tensor) -> list[str]:
    """Escaped labels of the tokens (their ids when no tokenizer gave strings)."""
    if tokens is None:
        return [str(i) for i in ids.tolist()]
    return [html.escape(str(token).translate(_VISIBLE_WHITESPACE), quote=True) for token in tokens]


def _cell(value: float, scale: float) -> str:
    r, g, b = _POSITIVE_RGB if value >= 0 else _NEGATIVE_RGB
    opacity = abs(value) / scale if scale > 0 else 0.0
    return (
        f'<td style="background-color: rgba({r}, {g}, {b}, {opacity:.4f}); min-width: 1.5em; height: 1.5em;" '
        f'title="{value:.6g}"></td>'
    )


class GenerationAttribution(PathAttribution):
    r"""Integrated gradients of each generated token of a causal language model, over the embeddings of its prefix.

    For a prompt ``x_1 … x_P`` and a continuation ``y_1 … y_T`` (given, or generated greedily), the score
    ``s_t(e) = score(y_t | e)`` of token ``y_t`` is a function of the embeddings ``e`` of its prefix
    ``x_1 … x_P y_1 … y_{t−1}``. Each token ``i`` of the prefix gets

    ``A_{t,i} = Σ_d (e_{i,d} − e′_{i,d}) ∫_0^1 ∂s_t(e′ + α (e − e′)) / ∂e_{i,d} dα``,

    where ``e′`` is the prefix with every token replaced by the baseline token (layer integrated gradients on the
    embedding layer). Completeness: ``Σ_i A_{t,i} = s_t(e) − s_t(e′)`` up to the quadrature error, reported per
    generated token as the delta.

    The score is the **logit** of ``y_t`` by default: the model's own evidence for the token. The probability
    saturates (a confident prediction's probability hardly moves, and its attributions shrink towards nothing),
    and the log-probability subtracts the log-sum-exp of every other token, so that evidence against competitors
    counts as evidence for ``y_t``. ``score="probability"`` (inseq's usual target) and ``"log_probability"`` are
    available.

    All generated positions are attributed together: their prefixes, padded on the right to the longest with an
    attention mask (each prefix keeps positions ``0 … len − 1``), form one batch of paths, evaluated in chunks of
    ``(position, α)`` rows under the memory budget. A causal model's prediction at a position does not depend on
    the padding after it, so each row is the model on its prefix alone, and the padding need not be computed: rows
    come longest prefix first, and each chunk runs its rows in a few groups of similar lengths, each cut to the
    width of its longest prefix. On a CPU a chunk holds whole positions, about :data:`CPU_CHUNK_ROWS` rows or one
    position's, unless the budget allows fewer. The scores at the paths' ends come from one pass over the whole
    sequence and one over its baseline.

    Parameters
    ----------
    model : torch.nn.Module
        A causal language model called as ``model(input_ids=..., attention_mask=...)`` that returns logits
        ``(N, L, vocabulary)`` or an object with such ``.logits`` (any ``transformers`` ``AutoModelForCausalLM``).
    tokenizer : optional
        A ``transformers`` tokenizer (``encode``, ``decode``, ``eos_token_id``, ``pad_token_id``): lets prompts and
        continuations be strings, names the tokens in the result, and supplies the default baseline token.
    embedding_layer : torch.nn.Module, optional
        The module whose output is integrated. Default: ``model.get_input_embeddings()``.

    References
    ----------
    Sundararajan, Taly, Yan. Axiomatic Attribution for Deep Networks. ICML 2017. https://arxiv.org/abs/1703.01365
    Sarti, Feldhus, Sickert, van der Wal, Nissim, Bisazza. Inseq: An Interpretability Toolkit for Sequence
    Generation Models. ACL 2023 (System Demonstrations). https://arxiv.org/abs/2302.13942
    """

    def __init__(self, model: nn.Module, tokenizer: Any = None, embedding_layer: nn.Module | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (a causal language model); got {type(model).__name__}")
        super().__init__(model, multiply_by_inputs=True)
        if embedding_layer is None:
            if not callable(getattr(model, "get_input_embeddings", None)):
                raise TypeError(
                    f"embedding_layer is required: {type(model).__name__} has no get_input_embeddings(); pass the "
                    "module that maps token ids to embeddings"
                )
            embedding_layer = model.get_input_embeddings()
        check_layer(model, embedding_layer, "embedding_layer")
        self.model = model
        self.tokenizer = tokenizer
        self.embedding_layer = embedding_layer
        self.vocabulary_size = _vocabulary_size(model, embedding_layer)
        self._keep_keyword = _logits_to_keep_keyword(model)

    @keeps_model_state
    def attribute(
        self,
        prompt: str | Sequence[int] | Tensor,
        continuation: str | Sequence[int] | Tensor | None = None,
        max_new_tokens: int | None = None,
        baseline_token_id: int | None = None,
        n_steps: int | str = 50,
        method: str = "gausslegendre",
        internal_batch_size: int | None = None,
        memory_budget: int | str | None = None,
        *,
        score: str = "logit",
        tolerance: float = 1e-3,
    ) -> GenerationAttributions:
        """Attribute every token of the continuation to the tokens before it.

        Parameters
        ----------
        prompt : str, list of int or Tensor
            Text (encoded by the tokenizer with its special tokens, e.g. a beginning-of-sequence token), or token
            ids: a list, a 1-D integer tensor, or a ``(1, P)`` one.
        continuation : str, list of int or Tensor, optional
            The tokens to attribute. Text is encoded on its own, without special tokens; give ids where the
            tokenization at the boundary matters.
        max_new_tokens : int, optional
            Instead of ``continuation``: generate this many tokens by greedy (argmax) decoding, stopping after an
            end-of-sequence token (the tokenizer's, or the model's generation config's).
        baseline_token_id : int, optional
            The token whose embedding starts every path. Default: the tokenizer's pad token, else its
            end-of-sequence token, else the model config's.
        n_steps : int or "auto", default 50
            Path points per generated token; ``"auto"`` chooses them until the estimated relative L1 error is below
            ``tolerance``.
        method : str, default "gausslegendre"
            The quadrature rule, as for :meth:`IntegratedGradients.attribute`.
        internal_batch_size : int, optional
            Rows (generated position × path point) per forward pass. Default: chosen from ``memory_budget``.
        memory_budget : int or str, optional
            Bytes a forward/backward chunk may use, e.g. ``"256MiB"``.
        score : str, default "logit"
            ``"logit"``, ``"log_probability"`` or ``"probability"`` of each generated token.
        tolerance : float, default 1e-3
            Relative L1 error target for ``n_steps="auto"``.

        Returns
        -------
        GenerationAttributions
            The attribution matrices, deltas, scores and tokens; ``last_report`` describes the integration.
        """
        score = _check_score(score)
        device = _device_of(self.model, self.embedding_layer)
        settings = self._rule_settings(n_steps, method, internal_batch_size, memory_budget, tolerance, device)
        prompt_ids = self._token_ids(prompt, "prompt", device, special_tokens=True)
        baseline = self._baseline_token(baseline_token_id)
        if continuation is not None and max_new_tokens is not None:
            raise ValueError(
                "give continuation (the tokens to attribute) or max_new_tokens (to generate them), not both"
            )
        if continuation is not None:
            generated = self._token_ids(continuation, "continuation", device, special_tokens=False)
            self._check_length(prompt_ids.shape[0] + generated.shape[0] - 1, "prompt and continuation")
        elif max_new_tokens is not None:
            max_new_tokens = arguments.check_positive_int("max_new_tokens", max_new_tokens, allow_none=False)
            self._check_length(prompt_ids.shape[0] + max_new_tokens - 1, "prompt and max_new_tokens")
            generated = self._greedy(prompt_ids, max_new_tokens)
        else:
            raise ValueError(
                "continuation or max_new_tokens is required: give the tokens to attribute (text or ids), or the "
                "number of tokens to generate greedily"
            )
        return self._attribute_tokens(prompt_ids, generated, baseline, score, settings)

    def _attribute_tokens(
        self, prompt_ids: Tensor, generated: Tensor, baseline: int, score: str, settings: dict
    ) -> GenerationAttributions:
        """Layer IG of every generated position at once: one path per position, its prefix padded on the right."""
        n_prompt, n_generated = prompt_ids.shape[0], generated.shape[0]
        width = n_prompt + n_generated - 1
        sequence = torch.cat([prompt_ids, generated])[:width]
        lengths = torch.arange(n_prompt, n_prompt + n_generated, device=sequence.device)
        # Each row holds the whole sequence: the tokens after a row's prefix are masked, and a causal model's
        # prediction at the prefix's end cannot see them anyway.
        ids = sequence.expand(n_generated, width).contiguous()
        mask = (torch.arange(width, device=sequence.device) < lengths.unsqueeze(1)).long()
        start, end = self._embedding_ends(ids, torch.where(mask.bool(), baseline, ids), mask, settings)
        probe = self._probe(ids, mask, lengths, generated, score)
        path = StraightLine((start,), (end,))
        if settings["n_steps"] == "auto":
            result = self._integrate(probe, path, settings, need_ends=True)
        else:
            ends = self._end_scores(ids[-1], (start[-1], end[-1]), lengths, generated, score)
            result = self._integrate_by_position(probe, path, settings, ends)
        (attributions,) = self._finish(result, [end.dtype])
        tokens = attributions.sum(-1)
        return GenerationAttributions(
            prompt_ids=prompt_ids,
            generated_ids=generated,
            prompt_attributions=tokens[:, :n_prompt],
            token_attributions=tokens,
            embedding_attributions=attributions,
            deltas=self.last_report.delta,
            scores=result.f_end.to(attributions.device),
            baseline_scores=result.f_start.to(attributions.device),
            score=score,
            baseline_token_id=baseline,
            prompt_tokens=self._token_strings(prompt_ids),
            generated_tokens=self._token_strings(generated),
        )

    def _integrate_by_position(
        self, probe: Callable, path: StraightLine, settings: dict, ends: tuple[Tensor, Tensor]
    ) -> PathIntegral:
        """A fixed rule's rows in order of generated position, the longest prefixes first; ``ends`` are the scores at
        the paths' starts and ends (:meth:`_end_scores`).

        Each chunk then holds a few neighbouring positions, and the probe runs it at the width of its longest prefix
        instead of the whole padded width. The first chunk, measured against the memory budget, costs the most per
        row, so the chunks sized from it fit too. On a CPU, chunks sized by a budget hold at most
        :func:`_cpu_chunk_rows` rows until the chunk-size tuning has chosen its own size: what the budget allows is
        far slower per row there, and the tuning, halving it while a half runs clearly faster, may stop at a size
        that is barely faster than its double.
        """
        alphas, weights = alphas_and_weights(settings["method"], settings["n_steps"])
        positions, n_alphas = path.batch, len(alphas)
        examples = torch.arange(positions - 1, -1, -1).repeat_interleave(n_alphas)
        rows = Rows(
            examples,
            torch.tensor(alphas, dtype=torch.float64).repeat(positions),
            torch.tensor(weights, dtype=torch.float64).repeat(positions).unsqueeze(1),
            examples,
            positions,
        )
        sums = WeightedSum(rows, path)
        with self._chunking(path, settings) as chunking:
            if chunking.budget is not None and chunking.speed_cap is None and path.device.type == "cpu":
                chunking.speed_cap = _cpu_chunk_rows(n_alphas)
            evaluate_rows(probe, path, rows, sums, chunking, keep_values=False)
        report = IntegrationReport.of(chunking, torch.full((positions,), n_alphas, dtype=torch.long))
        self.last_report = report
        return PathIntegral([sums.sums[0][0]], *ends, report, path, sums)

    def _end_scores(
        self, sequence: Tensor, points: tuple[Tensor, Tensor], lengths: Tensor, generated: Tensor, score: str
    ) -> tuple[Tensor, Tensor]:
        """The score of every generated token at its path's start and end (float64, on the CPU), from one pass.

        ``points`` are the embeddings of the whole sequence with every token the baseline token, and the real ones.
        A causal model's logits at position ``len − 1`` of the whole sequence are those of the prefix of ``len``
        tokens: one row of each end scores every position, where a row per position would cost them all.
        """
        rows = torch.stack(points)
        ids, mask = sequence.expand(2, -1), torch.ones((2, sequence.shape[0]), dtype=torch.long, device=rows.device)
        with torch.no_grad(), replaced([self.embedding_layer], [rows], use_input=False):
            # The last T positions are those the T generated tokens are predicted at, in order.
            logits = self._logits(ids, mask, keep=lengths.shape[0])
        values = _scored(logits.flatten(0, 1), generated.repeat(2), score).view(2, -1)
        start, end = values.to(device="cpu", dtype=torch.float64)
        return start, end

    def _logits(self, input_ids: Tensor, attention_mask: Tensor, keep: int | None = None) -> Tensor:
        """The model's logits ``(N, L, vocabulary)``, or those of the last ``keep`` positions only: a model that takes
        ``logits_to_keep`` (``transformers``) then skips the output layer at the others, in both passes."""
        kwargs = {self._keep_keyword: keep} if keep is not None and self._keep_keyword is not None else {}
        output = arguments.model_output(
            uncompiled(self.model)(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        )
        expected = tuple(input_ids.shape)
        shape = tuple(output.shape[:2]) if isinstance(output, Tensor) and output.dim() == 3 else None
        if shape == expected:
            return output if keep is None else output[:, expected[1] - keep :]
        if kwargs and shape == (expected[0], keep):
            return output
        got = f"shape {tuple(output.shape)}" if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            f"model must return logits of shape (N, L, vocabulary) (or an object with such .logits) for input_ids of "
            f"shape {expected}; got {got}"
        )

    def _embedding_ends(self, ids: Tensor, baseline_ids: Tensor, mask: Tensor, settings: dict) -> tuple[Tensor, Tensor]:
        """The embedding layer's values at the baseline prefixes (path starts) and the real ones (path ends)."""
        rows = ids.shape[0]
        both_ids, both_masks = torch.cat([ids, baseline_ids]), torch.cat([mask, mask])

        def values(part: slice) -> Tensor:
            (value,) = run_until(self._logits, [self.embedding_layer], False, (both_ids[part], both_masks[part]))
            return value

        with torch.no_grad():
            value = torch.cat(run_chunked(values, 2 * rows, settings["chunking"]))
        if not (isinstance(value, Tensor) and value.is_floating_point() and value.shape[:2] == both_ids.shape):
            raise TypeError(
                "embedding_layer must output one floating-point tensor of shape (N, L, ...) for input_ids (N, L); "
                f"{type(self.embedding_layer).__name__} gave "
                f"{f'shape {tuple(value.shape)}' if isinstance(value, Tensor) else type(value).__name__}"
            )
        end, start = value[:rows], value[rows:]
        # Outside a prefix the path stays put: those tokens get exactly zero.
        inside = mask.bool().view(mask.shape + (1,) * (value.dim() - 2))
        return torch.where(inside, start, end), end

    def _probe(
        self, ids: Tensor, mask: Tensor, lengths: Tensor, generated: Tensor, score: str
    ) -> Callable[[tuple[Tensor, ...], Tensor], Tensor]:
        """The score of each row's generated token, with the embedding layer's output replaced by the row's point.

        A chunk's rows run in groups of similar prefix lengths, each group at the width of its longest prefix (the
        columns after it are padding for every row of the group): padding costs as much as real tokens, and a few
        passes per chunk cost less than padding every prefix to the longest. Rows of a fixed rule come longest
        first; others are sorted, and their scores put back in order.
        """

        def group_scores(z: Tensor, rows: Tensor, row_lengths: Tensor) -> Tensor:
            width, shortest = int(row_lengths[0]), int(row_lengths[-1])
            # Only the logits from the shortest prefix's end on are needed: position len − 1 is kept column
            # len − shortest.
            with replaced([self.embedding_layer], [z[:, :width]], use_input=False):
                logits = self._logits(
                    ids.index_select(0, rows)[:, :width], mask.index_select(0, rows)[:, :width], width - shortest + 1
                )
            at_end = logits[torch.arange(rows.shape[0], device=logits.device), row_lengths - shortest]
            return _scored(at_end, generated.index_select(0, rows), score)

        def probe(points: tuple[Tensor, ...], examples: Tensor) -> Tensor:
            rows = examples.to(ids.device)
            row_lengths = lengths.index_select(0, rows)
            z, order = points[0], None
            if bool((row_lengths[1:] > row_lengths[:-1]).any()):
                order = torch.argsort(row_lengths, descending=True, stable=True)
                rows, row_lengths, z = rows[order], row_lengths[order], z.index_select(0, order.to(z.device))
            scores = torch.cat(
                [group_scores(z[a:b], rows[a:b], row_lengths[a:b]) for a, b in _width_groups(row_lengths.tolist())]
            )
            return scores if order is None else scores.index_select(0, torch.argsort(order).to(scores.device))

        return probe

    def _greedy(self, prompt_ids: Tensor, max_new_tokens: int) -> Tensor:
        """Argmax decoding, stopping after an end-of-sequence token."""
        stop = self._end_of_sequence_ids()
        sequence = prompt_ids
        with torch.no_grad():
            for _ in range(max_new_tokens):
                logits = self._logits(sequence.unsqueeze(0), torch.ones_like(sequence).unsqueeze(0), keep=1)
                token = logits[0, -1].argmax().reshape(1)
                sequence = torch.cat([sequence, token.to(sequence.device)])
                if int(token) in stop:
                    break
        return sequence[prompt_ids.shape[0] :]

    def _end_of_sequence_ids(self) -> set[int]:
        """The tokenizer's end-of-sequence id and those of the model's generation config (its config's without
        one), as ``model.generate`` stops at."""
        config = getattr(self.model, "generation_config", None) or getattr(self.model, "config", None)
        found: set[int] = set()
        for source in (self.tokenizer, config):
            value = getattr(source, "eos_token_id", None)
            values = value if isinstance(value, (list, tuple)) else [value]
            found.update(int(v) for v in values if arguments.is_int(v))
        return found

    def _baseline_token(self, baseline_token_id: Any) -> int:
        if baseline_token_id is None:
            config = getattr(self.model, "config", None)
            candidates = [
                getattr(source, name, None)
                for source in (self.tokenizer, config)
                for name in ("pad_token_id", "eos_token_id")
            ]
            baseline_token_id = next((v for v in candidates if arguments.is_int(v)), None)
            if baseline_token_id is None:
                raise ValueError(
                    "baseline_token_id is required: neither the tokenizer nor the model config has a pad or "
                    "end-of-sequence token id; pass the id of a neutral token (e.g. a pad or space token)"
                )
        if not arguments.is_int(baseline_token_id):
            raise TypeError(f"baseline_token_id must be an int token id; got {type(baseline_token_id).__name__}")
        if self.vocabulary_size is not None and not 0 <= baseline_token_id < self.vocabulary_size:
            raise ValueError(
                f"baseline_token_id is {baseline_token_id}, outside the vocabulary of {self.vocabulary_size} ids "
                f"(0 to {self.vocabulary_size - 1})"
            )
        return int(baseline_token_id)

    def _token_ids(self, value: Any, name: str, device: torch.device, special_tokens: bool) -> Tensor:
        """``value`` (text, a list of ids or an integer tensor) as a 1-D LongTensor of valid ids on ``device``."""
        if isinstance(value, str):
            if self.tokenizer is None:
                raise TypeError(
                    f"{name} is a string, which needs a tokenizer: pass tokenizer= to GenerationAttribution, or give "
                    "token ids (a list of ints or a 1-D integer tensor)"
                )
            value = list(self.tokenizer.encode(value, add_special_tokens=special_tokens))
        if isinstance(value, Tensor):
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer token ids; got a tensor of dtype {value.dtype}")
            if value.dim() == 2 and value.shape[0] == 1:
                value = value[0]
            if value.dim() != 1:
                raise ValueError(
                    f"{name} must be one sequence: a 1-D tensor of token ids (or shape (1, L)); got shape "
                    f"{tuple(value.shape)}"
                )
            ids = value.detach().to(device=device, dtype=torch.long)
        elif isinstance(value, (list, tuple)) and all(arguments.is_int(v) for v in value):
            ids = torch.tensor([int(v) for v in value], dtype=torch.long, device=device)
        else:
            raise TypeError(
                f"{name} must be text (with a tokenizer), a list of int token ids or a 1-D integer tensor; got "
                f"{type(value).__name__}"
            )
        if ids.numel() == 0:
            raise ValueError(f"{name} holds no tokens; give at least one")
        if self.vocabulary_size is not None:
            outside = ids[(ids < 0) | (ids >= self.vocabulary_size)]
            if outside.numel():
                raise ValueError(
                    f"{name} holds token id {int(outside[0])}, outside the vocabulary of {self.vocabulary_size} ids "
                    f"(0 to {self.vocabulary_size - 1})"
                )
        return ids

    def _check_length(self, longest_prefix: int, what: str) -> None:
        config = getattr(self.model, "config", None)
        limit = getattr(config, "max_position_embeddings", None) if config is not None else None
        if arguments.is_int(limit) and longest_prefix > limit:
            raise ValueError(
                f"{what} need prefixes of {longest_prefix} tokens, more than the model's {limit} positions; shorten "
                "them"
            )

    def _token_strings(self, ids: Tensor) -> list[str] | None:
        if self.tokenizer is None:
            return None
        return [self.tokenizer.decode([i]) for i in ids.tolist()]


def _scored(logits: Tensor, tokens: Tensor, score: str) -> Tensor:
    """``score`` of ``tokens[i]`` from the logits ``(N, vocabulary)`` of row ``i``."""
    token = tokens.unsqueeze(1)
    if score == "logit":
        return logits.gather(1, token).squeeze(1)
    if score == "log_probability":
        return torch.log_softmax(logits, -1).gather(1, token).squeeze(1)
    return torch.softmax(logits, -1).gather(1, token).squeeze(1)


def _logits_to_keep_keyword(model: nn.Module) -> str | None:
    """The keyword by which ``model`` computes the logits of its last positions only: ``transformers``'
    ``logits_to_keep`` (``num_logits_to_keep`` before version 4.50), or None for a model that takes neither."""
    try:
        parameters = inspect.signature(uncompiled_module(model).forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("logits_to_keep", "num_logits_to_keep") if name in parameters), None)


def _cpu_chunk_rows(n_alphas: int) -> int:
    """Rows of the fewest whole positions (``n_alphas`` rows each) that hold :data:`CPU_CHUNK_ROWS` rows."""
    return n_alphas * -(-CPU_CHUNK_ROWS // n_alphas)


def _width_groups(lengths: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of runs of prefix lengths (sorted longest first) that share a width: a run ends before the
    first length under :data:`WIDTH_SHARE` of its longest."""
    bounds, start = [], 0
    for i, length in enumerate(lengths):
        if length < WIDTH_SHARE * lengths[start]:
            bounds.append((start, i))
            start = i
    bounds.append((start, len(lengths)))
    return bounds


def _check_score(score: Any) -> str:
    if not isinstance(score, str) or score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    return score


def _vocabulary_size(model: nn.Module, embedding_layer: nn.Module) -> int | None:
    """The number of token ids the model accepts (None when it cannot be told)."""
    candidates = [embedding_layer]
    if callable(getattr(model, "get_input_embeddings", None)):
        candidates.insert(0, model.get_input_embeddings())
    for module in candidates:
        size = getattr(module, "num_embeddings", None)
        if arguments.is_int(size):
            return int(size)
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if arguments.is_int(size) else None


def _device_of(model: nn.Module, embedding_layer: nn.Module) -> torch.device:
    for module in (embedding_layer, model):
        for parameter in module.parameters():
            return parameter.device
    return torch.device("cpu")
