"""InternalInfluence of the digits CNN's second convolution for three digits: the influence summed over the 32
channels at each position, and per channel."""

import matplotlib.pyplot as plt
from _common import chosen_digits, described, example, save

from integrad import InternalInfluence, visualize

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

influence = InternalInfluence(model, model[2]).attribute(x, target=predicted, n_steps=64)
titles = described(y, predicted)
figure, axes = plt.subplots(len(x), 3, figsize=(10, 2.4 * len(x)), gridspec_kw={"width_ratios": [1, 1, 3]})
for i in range(len(x)):
    axes[i][0].imshow(x[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[i][0].set_title(titles[i], fontsize=9)
    axes[i][0].set_axis_off()
    visualize.image_heatmap(influence[i].sum(0), ax=axes[i][1], title="sum over channels", colorbar=False)
    axes[i][1].title.set_fontsize(9)
    values = influence[i].sum(dim=(1, 2))
    axes[i][2].bar(range(32), values.numpy(), color=["#c0392b" if v > 0 else "#2e86c1" for v in values.tolist()])
    axes[i][2].set_title("influence per channel (sum over positions)", fontsize=9)
    axes[i][2].set_xticks(range(0, 32, 4))
figure.tight_layout()
save(figure, "internal-influence.png")
