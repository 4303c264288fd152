"""LayerGradientShap at the first convolution: the attributions of its 16 channels summed, per position, and the
four channels with the largest total, for one digit."""

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import example, save

from integrad import LayerGradientShap, visualize

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
background = names["pixels"][names["train"][:100]]
x, y = images[:1], labels[:1]

torch.manual_seed(0)
np.random.seed(0)
attributions = LayerGradientShap(model, model[0]).attribute(x, background, n_samples=200, target=y)[0]
totals = attributions.sum(dim=(1, 2))
top = totals.abs().argsort(descending=True)[:4]

figure, axes = plt.subplots(1, 6, figsize=(13, 2.6))
axes[0].imshow(x[0, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
axes[0].set_title(f"digit {int(y[0])}", fontsize=9)
axes[0].set_axis_off()
visualize.image_heatmap(attributions.sum(0), ax=axes[1], title="all 16 channels", colorbar=False)
for ax, channel in zip(axes[2:], top.tolist()):
    visualize.image_heatmap(
        attributions[channel], ax=ax, title=f"channel {channel} ({float(totals[channel]):+.2f})", colorbar=False
    )
for ax in axes[1:]:
    ax.title.set_fontsize(9)
figure.suptitle("LayerGradientShap at the first convolution of the digits CNN", fontsize=10)
figure.tight_layout()
save(figure, "layer-gradient-shap.png")
