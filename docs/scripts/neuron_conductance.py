"""NeuronConductance: the part of each pixel's integrated gradient that flows through the hidden unit most active
for each digit, next to that unit's own integrated gradients and the output's."""

import torch
from _common import chosen_digits, described, digit_grid, example, save

from integrad import IntegratedGradients, NeuronConductance, NeuronIntegratedGradients

names = example("digits_cnn")
model, images, labels = names["model"], names["images"], names["labels"]
rows = chosen_digits(model, images, labels)
x, y = images[rows], labels[rows]
predicted = model(x).argmax(1)
with torch.no_grad():
    units = model[:7](x).argmax(1)

hidden = model[6]


def per_digit(method, **options):
    return torch.cat([method(x[i : i + 1], neuron_selector=int(u), n_steps=64, **options) for i, u in enumerate(units)])


maps = {
    "output (IG)": IntegratedGradients(model).attribute(x, target=predicted, n_steps=64),
    "through the unit\n(NeuronConductance)": torch.cat(
        [
            NeuronConductance(model, hidden).attribute(
                x[i : i + 1], neuron_selector=int(u), target=predicted[i : i + 1], n_steps=64
            )
            for i, u in enumerate(units)
        ]
    ),
    "the unit itself\n(NeuronIG)": per_digit(NeuronIntegratedGradients(model, hidden).attribute),
}
titles = [f"{t}\nunit {int(u)}" for t, u in zip(described(y, predicted), units)]
save(digit_grid(x, maps, titles), "neuron-conductance.png")
