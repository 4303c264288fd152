"""Blur IG next to integrated gradients from a black image, for three digits."""

from _common import chosen_digits, described, digit_grid, example, save

from integrad import BlurIntegratedGradients, IntegratedGradients

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

maps = {
    "integrated gradients\n(black baseline)": IntegratedGradients(model).attribute(x, target=predicted, n_steps="auto"),
    "Blur IG (σ_max = 4,\n100 blur levels)": BlurIntegratedGradients(model).attribute(
        x, target=predicted, max_sigma=4.0, n_steps=100
    ),
    "Blur IG (σ_max = 4,\nn_steps='auto')": BlurIntegratedGradients(model).attribute(
        x, target=predicted, max_sigma=4.0, n_steps="auto"
    ),
}
save(digit_grid(x, maps, described(y, predicted)), "blur-integrated-gradients.png")
