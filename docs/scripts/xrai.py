"""XRAI on three digits, with 2×2 blocks as the candidate regions: the region map (each pixel gets its region's
attribution density) next to the integrated gradients it ranks."""

import torch
from _common import chosen_digits, described, digit_grid, example, save

from integrad import XRAI, IntegratedGradients

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

blocks = torch.arange(16).view(4, 4).repeat_interleave(2, 0).repeat_interleave(2, 1)  # sixteen 2×2 regions
xrai = XRAI(model)
regions = xrai.attribute(x, target=predicted, segments=blocks.expand(len(x), 8, 8), min_pixel_diff=1)
ig = IntegratedGradients(model)
black_and_white = (
    ig.attribute(x, baselines=0.0, target=predicted, n_steps="auto")
    + ig.attribute(x, baselines=1.0, target=predicted, n_steps="auto")
) / 2
maps = {"integrated gradients\n(black and white baselines)": black_and_white, "XRAI regions": regions}
save(digit_grid(x, maps, described(y, predicted)), "xrai.png")
