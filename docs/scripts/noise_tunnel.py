"""NoiseTunnel around integrated gradients: plain IG, SmoothGrad (the mean over noisy copies) and VarGrad (their
variance), for three digits."""

import torch
from _common import chosen_digits, described, digit_grid, example, save

from integrad import IntegratedGradients, NoiseTunnel

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

ig = IntegratedGradients(model)
tunnel = NoiseTunnel(ig)
options = dict(nt_samples=32, stdevs=0.15, target=predicted, n_steps=32)
maps = {
    "integrated gradients": ig.attribute(x, target=predicted, n_steps=32),
    "SmoothGrad (32 copies)": tunnel.attribute(
        x, nt_type="smoothgrad", generator=torch.Generator().manual_seed(0), **options
    ),
    "VarGrad (32 copies)": tunnel.attribute(
        x, nt_type="vargrad", generator=torch.Generator().manual_seed(0), **options
    ),
}
save(digit_grid(x, maps, described(y, predicted)), "noise-tunnel.png")
