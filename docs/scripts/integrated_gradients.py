"""Integrated gradients of three held-out digits, one of them misclassified: for the predicted class from a black
and from a blurred baseline, and for the true class."""

from _common import chosen_digits, described, digit_grid, example, save

from integrad import IntegratedGradients
from integrad.explainers.baselines import gaussian_blur

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

ig = IntegratedGradients(model)
maps = {
    "predicted class,\nblack baseline": ig.attribute(x, target=predicted, n_steps="auto"),
    "predicted class,\nblurred baseline": ig.attribute(
        x, baselines=gaussian_blur(x, sigma=1.0), target=predicted, n_steps="auto"
    ),
    "true class,\nblack baseline": ig.attribute(x, target=y, n_steps="auto"),
}
save(digit_grid(x, maps, described(y, predicted)), "integrated-gradients.png")
