"""LayerIntegratedGradients on the MiniLM embeddings: which tokens make each of two sentences similar to the other."""

import matplotlib.pyplot as plt
import torch
from _common import example, save

from integrad import LayerIntegratedGradients
from integrad.app.demo import SentenceSimilarity

names = example("minilm")
encoder, tokenizer = names["encoder"], names["tokenizer"]
sentences = ("A man is playing a guitar on stage.", "Someone performs music with a guitar.")
encoded = [tokenizer([s], return_tensors="pt") for s in sentences]
with torch.no_grad():
    pooled = [SentenceSimilarity.pool(encoder(**e).last_hidden_state, e["attention_mask"]) for e in encoded]

special = torch.tensor(tokenizer.all_special_ids)
panels, labels = {}, []
for this, other in ((0, 1), (1, 0)):
    model = SentenceSimilarity(encoder, pooled[other]).eval()
    ids, mask = encoded[this]["input_ids"], encoded[this]["attention_mask"]
    pads = torch.where(torch.isin(ids, special), ids, tokenizer.pad_token_id)
    lig = LayerIntegratedGradients(model, encoder.embeddings)
    attributions = lig.attribute(ids, baselines=pads, additional_forward_args=(mask,), n_steps=64)
    words = tokenizer.convert_ids_to_tokens(ids[0])
    panels[f"“{sentences[this]}”\nagainst “{sentences[other]}”"] = (words, attributions.sum(-1)[0])

figure, axes = plt.subplots(1, 2, figsize=(9.5, 4.6))
for ax, (title, (words, scores)) in zip(axes, panels.items()):
    ax.barh(range(len(words)), scores.numpy(), color=["#c0392b" if v > 0 else "#2e86c1" for v in scores.tolist()])
    ax.set_yticks(range(len(words)), words)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("attribution (sum over the embedding)")
figure.suptitle("LayerIntegratedGradients on MiniLM's embeddings: cosine similarity of two sentences", fontsize=10)
figure.tight_layout()
save(figure, "layer-integrated-gradients.png")
