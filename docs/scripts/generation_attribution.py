"""GenerationAttribution of a pretrained causal language model: each generated token (rows) against each prompt token
(columns), for the model and tokenizer stored in a folder given as the first argument (read offline):

    python docs/scripts/generation_attribution.py /path/to/causal-lm

The site's examples ship no pretrained generative model, so without a folder the script says so and draws nothing.
"""

import sys

import matplotlib.pyplot as plt
from _common import save

from integrad.methods.generation import GenerationAttribution

PROMPT = "The guitar player walked on stage and"

if len(sys.argv) < 2:
    print("generation_attribution.py: give the folder of a causal language model to draw generation-attribution.png")
    sys.exit(0)

import transformers  # noqa: E402

folder = sys.argv[1]
tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
explained = GenerationAttribution(model, tokenizer).attribute(PROMPT, max_new_tokens=8, n_steps="auto")

values = explained.prompt_attributions.detach().float()
limit = float(values.abs().max())
figure, ax = plt.subplots(figsize=(0.55 * values.shape[1] + 2.5, 0.45 * values.shape[0] + 1.8))
ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
ax.set_xticks(range(values.shape[1]), explained.prompt_tokens, rotation=60, ha="right")
ax.set_yticks(range(values.shape[0]), explained.generated_tokens)
ax.set_xlabel("prompt token")
ax.set_ylabel("generated token")
ax.set_title(f"GenerationAttribution (logits), {folder.rstrip('/').split('/')[-1]}", fontsize=10)
figure.tight_layout()
save(figure, "generation-attribution.png")
