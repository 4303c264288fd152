"""What the picture scripts share: the site's example models, and the layouts of their figures.

The models come from ``docs/snippets``, the same code the pages show and the docs test runs, so a picture is made
from the model a reader trains by following the page. Every script writes one PNG into ``docs/images``; run one
with ``python docs/scripts/<name>.py``, or all of them with ``python docs/scripts/make_images.py``.
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Mapping, Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from integrad import visualize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "docs" / "snippets"
IMAGES = ROOT / "docs" / "images"


def example(name: str) -> dict:
    """The names a snippet of ``docs/snippets`` defines (``digits_cnn``, ``cancer_mlp``, ``minilm``)."""
    torch.set_num_threads(1)  # the models are small: one thread trains them fastest
    return runpy.run_path(str(SNIPPETS / f"{name}.py"))


def save(figure, name: str) -> Path:
    """Write ``figure`` to ``docs/images/<name>`` and close it."""
    path = visualize.save_figure(figure, IMAGES / name, dpi=110)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def digit_grid(images: torch.Tensor, maps: Mapping[str, torch.Tensor], titles: Sequence[str]):
    """One row per digit: the image, then each attribution map (red for, blue against the target)."""
    rows, columns = len(images), 1 + len(maps)
    figure, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 2.2 * rows), squeeze=False)
    for i in range(rows):
        axes[i][0].imshow(images[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[i][0].set_title(titles[i], fontsize=9)
        axes[i][0].set_axis_off()
        for j, (name, attribution) in enumerate(maps.items(), start=1):
            visualize.image_heatmap(attribution[i], ax=axes[i][j], title=name, colorbar=False)
            axes[i][j].title.set_fontsize(9)
    figure.tight_layout()
    return figure


def token_bars(tokens: Sequence[str], scores: Mapping[str, torch.Tensor], title: str):
    """Side-by-side horizontal bars of per-token scores, one panel per method."""
    figure, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 0.32 * len(tokens) + 1.2), squeeze=False)
    positions = range(len(tokens))
    for ax, (name, values) in zip(axes[0], scores.items()):
        values = values.detach().double()
        ax.barh(positions, values.numpy(), color=["#c0392b" if v > 0 else "#2e86c1" for v in values.tolist()])
        ax.set_yticks(list(positions), tokens, fontsize=9)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.6)
        ax.set_title(name, fontsize=10)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def described(labels: torch.Tensor, predictions: torch.Tensor) -> list[str]:
    """Titles for digits: the label, and the prediction when it differs."""
    return [
        f"digit {int(y)}" if int(y) == int(p) else f"digit {int(y)}, predicted {int(p)}"
        for y, p in zip(labels, predictions)
    ]


def chosen_digits(model, images: torch.Tensor, labels: torch.Tensor, count: int = 3) -> torch.Tensor:
    """Indices of ``count`` held-out digits: the first misclassified one, then the first correct ones of other
    classes, so that a figure shows a mistake next to typical successes."""
    with torch.no_grad():
        predictions = model(images).argmax(1)
    wrong = torch.nonzero(predictions != labels).flatten().tolist()[:1]
    seen = {int(labels[i]) for i in wrong}
    picked = list(wrong)
    for i in range(len(labels)):
        if len(picked) == count:
            break
        if int(predictions[i]) == int(labels[i]) and int(labels[i]) not in seen:
            picked.append(i)
            seen.add(int(labels[i]))
    return torch.tensor(picked)
