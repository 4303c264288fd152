"""GenerationAttribution of the small GPT-2 of ``docs/snippets/tiny_gpt2.py`` (trained here in a few seconds, no
download): each generated character (rows) against each character of the prompt (columns)."""

import matplotlib.pyplot as plt
from _common import example, save
from mpl_toolkits.axes_grid1 import make_axes_locatable

from integrad import GenerationAttribution, visualize

PROMPT = "This module provides "
#: Whitespace drawn visibly, as ``GenerationAttributions.to_html`` draws it: a space must not look like no label.
VISIBLE = str.maketrans({" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5"})

names = example("tiny_gpt2")
explained = GenerationAttribution(names["lm"], names["tokenizer"]).attribute(PROMPT, max_new_tokens=8, n_steps="auto")

values = explained.prompt_attributions.detach()
largest = float(values.abs().max())
figure, ax = plt.subplots(figsize=(0.36 * values.shape[1] + 1.8, 0.36 * values.shape[0] + 1.6))
# Red for, blue against the generated character; the colours scaled by the largest |attribution|.
visualize.image_heatmap(values, ax=ax, clip_percentile=100.0, colorbar=False)
bar = figure.colorbar(ax.images[-1], cax=make_axes_locatable(ax).append_axes("right", size=0.15, pad=0.15))
bar.set_label(f"attribution / {largest:.2f}", fontsize=9)
ax.set_xticks(range(values.shape[1]), [token.translate(VISIBLE) for token in explained.prompt_tokens])
ax.set_yticks(range(values.shape[0]), [token.translate(VISIBLE) for token in explained.generated_tokens])
ax.tick_params(labelsize=10, length=0)
ax.set_xlabel("prompt")
ax.set_ylabel("generated, top to bottom")
ax.set_title(
    f"GenerationAttribution: {PROMPT!r} → {''.join(explained.generated_tokens)!r}\n"
    f"the logit of each generated character, attributed to the prompt (largest |delta| "
    f"{float(explained.deltas.abs().max()):.1e})",
    fontsize=10,
)
figure.tight_layout()
save(figure, "generation-attribution.png")
