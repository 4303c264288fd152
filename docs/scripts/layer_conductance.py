"""LayerConductance of the 32 channels of the digits CNN's second convolution, for three digits: the total per
channel, and where in the image the most important channel conducts."""

import matplotlib.pyplot as plt
from _common import chosen_digits, described, example, save

from integrad import LayerConductance, visualize

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

conductance = LayerConductance(model, model[2]).attribute(x, target=predicted, n_steps=64)
per_channel = conductance.sum(dim=(2, 3))
titles = described(y, predicted)

figure, axes = plt.subplots(len(x), 3, figsize=(10, 2.4 * len(x)), gridspec_kw={"width_ratios": [1, 3, 1]})
for i in range(len(x)):
    axes[i][0].imshow(x[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[i][0].set_title(titles[i], fontsize=9)
    axes[i][0].set_axis_off()
    values = per_channel[i]
    axes[i][1].bar(range(32), values.numpy(), color=["#c0392b" if v > 0 else "#2e86c1" for v in values.tolist()])
    axes[i][1].set_title("conductance per channel (sum over positions)", fontsize=9)
    axes[i][1].set_xticks(range(0, 32, 4))
    best = int(values.abs().argmax())
    visualize.image_heatmap(conductance[i, best], ax=axes[i][2], title=f"channel {best}", colorbar=False)
    axes[i][2].title.set_fontsize(9)
figure.tight_layout()
save(figure, "layer-conductance.png")
