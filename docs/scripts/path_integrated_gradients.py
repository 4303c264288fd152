"""PathIntegratedGradients: integrated gradients along the straight line from black, and along a path that goes
from black to a blurred copy of the digit and then sharpens it, for three digits."""

import torch
from _common import chosen_digits, described, digit_grid, example, save

from integrad import PathIntegratedGradients
from integrad.explainers.baselines import gaussian_blur
from integrad.paths import StraightLine

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)
blurred = gaussian_blur(x, sigma=1.0)


def through_blur(alphas):
    a = alphas.view(-1, 1, 1, 1, 1).to(x.dtype)
    first = a < 0.5
    points = torch.where(first, 2 * a * blurred, blurred + (2 * a - 1) * (x - blurred))
    velocities = torch.where(first, 2 * blurred, 2 * (x - blurred))
    return points, velocities


path_ig = PathIntegratedGradients(model)
options = dict(target=predicted, n_steps=128, method="riemann_middle")
maps = {
    "straight line\nfrom black": path_ig.attribute(x, StraightLine((torch.zeros_like(x),), (x,)), **options),
    "black → blurred → digit": path_ig.attribute(x, through_blur, **options),
}
save(digit_grid(x, maps, described(y, predicted)), "path-integrated-gradients.png")
