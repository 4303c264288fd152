"""GradientShap with a background of 100 training digits, without and with input noise, for three digits."""

import numpy as np
import torch
from _common import chosen_digits, described, digit_grid, example, save

from integrad import GradientShap

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
background = names["pixels"][names["train"][:100]]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

shap = GradientShap(model)
maps = {}
for stdevs in (0.0, 0.1):
    torch.manual_seed(0)
    np.random.seed(0)
    maps[f"GradientShap, 200 samples,\nnoise σ = {stdevs}"] = shap.attribute(
        x, background, n_samples=200, stdevs=stdevs, target=predicted
    )
save(digit_grid(x, maps, described(y, predicted)), "gradient-shap.png")
