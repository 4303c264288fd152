"""The integrand dF/dα along the straight path of a held-out digit, with the 16 Gauss–Legendre points of a fixed
rule sized by their weights: the picture that shows why a delta is large."""

import matplotlib.pyplot as plt
from _common import chosen_digits, example, save

from integrad import IntegratedGradients, visualize

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x = images[rows[:1]]
predicted = model(x).argmax(1)

figure, ax = plt.subplots(figsize=(7.5, 4.2))
visualize.path_integrand(
    IntegratedGradients(model), x, target=predicted, method="gausslegendre", n_steps=16, n_dense=600, ax=ax
)
ax.set_title(f"Integrand along the path from black to a held-out digit (class {int(predicted[0])})")
save(figure, "digits-integrand.png")
