"""NeuronIntegratedGradients: for three digits, the input attributions of the hidden unit most active for each,
next to the integrated gradients of the predicted class."""

import torch
from _common import chosen_digits, described, digit_grid, example, save

from integrad import IntegratedGradients, NeuronIntegratedGradients

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)

hidden = model[6]  # Linear(512, 64): the last hidden layer, before its ReLU
with torch.no_grad():
    units = model[:7](x).argmax(1)
neuron = NeuronIntegratedGradients(model, hidden)
per_unit = torch.cat(
    [neuron.attribute(x[i : i + 1], neuron_selector=int(u), n_steps="auto") for i, u in enumerate(units)]
)
maps = {
    "most active hidden unit": per_unit,
    "predicted class (IG)": IntegratedGradients(model).attribute(x, target=predicted, n_steps="auto"),
}
titles = [f"{t}\nunit {int(u)}" for t, u in zip(described(y, predicted), units)]
save(digit_grid(x, maps, titles), "neuron-integrated-gradients.png")
