"""Sequential integrated gradients next to layer integrated gradients, on MiniLM's embeddings."""

from _common import save, token_bars
from _text import attention_mask, encoder, input_ids, pads, similarity, tokens

from integrad import LayerIntegratedGradients, LayerSequentialIntegratedGradients

options = dict(baselines=pads, additional_forward_args=(attention_mask,), n_steps=32)
scores = {
    "LayerIntegratedGradients": LayerIntegratedGradients(similarity, encoder.embeddings)
    .attribute(input_ids, **options)
    .sum(-1)[0],
    "LayerSequentialIntegratedGradients": LayerSequentialIntegratedGradients(similarity, encoder.embeddings)
    .attribute(input_ids, **options)
    .sum(-1)[0],
}
title = "“A man is playing a guitar on stage.”, similarity to “Someone performs music with a guitar.”"
save(token_bars(tokens, scores, title), "sequential-integrated-gradients.png")
