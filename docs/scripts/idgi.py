"""IDGI over integrated gradients and over Guided IG, next to the methods alone, for three digits."""

from _common import chosen_digits, described, digit_grid, example, save

from integrad import IDGI, GuidedIntegratedGradients, IntegratedGradients

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

ig, guided = IntegratedGradients(model), GuidedIntegratedGradients(model)
maps = {
    "integrated gradients": ig.attribute(x, target=predicted, n_steps="auto"),
    "IDGI over IG\n(64 steps)": IDGI(ig).attribute(x, target=predicted, n_steps=64),
    "Guided IG": guided.attribute(x, target=predicted),
    "IDGI over Guided IG": IDGI(guided).attribute(x, target=predicted),
}
save(digit_grid(x, maps, described(y, predicted)), "idgi.png")
