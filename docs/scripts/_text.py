"""What the text pictures share: MiniLM, the sentence, its pad-token baseline and the model from embeddings."""

import torch
from _common import example

from integrad.app.demo import SentenceSimilarity

names = example("minilm")
encoder, tokenizer, similarity = names["encoder"], names["tokenizer"], names["similarity"]
input_ids, attention_mask, tokens = names["input_ids"], names["attention_mask"], names["tokens"]
reference_embedding = names["reference_embedding"]
special = torch.tensor(tokenizer.all_special_ids)
pads = torch.where(torch.isin(input_ids, special), input_ids, tokenizer.pad_token_id)


def from_embeddings(embeddings, mask):
    """The similarity as a function of the word embeddings (the encoder adds positions and token types)."""
    states = encoder(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state
    pooled = SentenceSimilarity.pool(states, mask)
    return torch.nn.functional.cosine_similarity(pooled, reference_embedding.expand_as(pooled), dim=-1)
