"""Discretized integrated gradients (monotonic paths through MiniLM's vocabulary) next to integrated gradients on the
straight line, both in the word embeddings."""

from _common import save, token_bars
from _text import attention_mask, encoder, from_embeddings, input_ids, pads, tokenizer, tokens

from integrad import DiscretizedIntegratedGradients, IntegratedGradients, MonotonicPathBuilder

words = encoder.embeddings.word_embeddings
embedded = words(input_ids)
builder = MonotonicPathBuilder(words, n_neighbors=50, special_token_ids=tokenizer.all_special_ids)
scores = {
    "integrated gradients (straight line)": IntegratedGradients(from_embeddings)
    .attribute(embedded, baselines=words(pads), additional_forward_args=(attention_mask,), n_steps=64)
    .sum(-1)[0],
    "DIG, greedy, 100 points": DiscretizedIntegratedGradients(from_embeddings)
    .attribute(embedded, builder.build(input_ids, pads, n_steps=100), additional_forward_args=(attention_mask,))
    .sum(-1)[0],
}
title = "Word-embedding attributions for the similarity of two sentences (MiniLM)"
save(token_bars(tokens, scores, title), "discretized-integrated-gradients.png")
