"""Expected gradients over a background of 100 training digits, next to integrated gradients from a black image, for
three held-out digits."""

import torch
from _common import chosen_digits, described, digit_grid, example, save

from integrad import ExpectedGradients, IntegratedGradients

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
background = names["pixels"][names["train"][:100]]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

eg = ExpectedGradients(model)
maps = {
    "integrated gradients\n(black baseline)": IntegratedGradients(model).attribute(x, target=predicted, n_steps="auto"),
    "expected gradients\n(sampled, 500 rows)": eg.attribute(
        x, background, target=predicted, n_samples=500, generator=torch.Generator().manual_seed(0)
    ),
    "expected gradients\n(100 baselines × 16 GL points)": eg.attribute(
        x, background, target=predicted, n_samples=100, n_steps=16
    ),
}
save(digit_grid(x, maps, described(y, predicted)), "expected-gradients.png")
