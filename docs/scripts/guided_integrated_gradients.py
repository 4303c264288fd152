"""Guided IG next to integrated gradients (both from a black image), for three digits."""

from _common import chosen_digits, described, digit_grid, example, save

from integrad import GuidedIntegratedGradients, IntegratedGradients

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

maps = {
    "integrated gradients": IntegratedGradients(model).attribute(x, target=predicted, n_steps="auto"),
    "Guided IG (200 steps)": GuidedIntegratedGradients(model).attribute(x, target=predicted),
    "Guided IG,\nmax_dist = 0.1": GuidedIntegratedGradients(model).attribute(x, target=predicted, max_dist=0.1),
}
save(digit_grid(x, maps, described(y, predicted)), "guided-integrated-gradients.png")
