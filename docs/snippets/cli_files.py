# What the command line reads: the trained digits CNN behind a model factory, one digit as a PNG, and a data set.
# ruff: noqa: F821 (model, images and labels are the digits snippet's, above)
from pathlib import Path

import numpy as np
import torch
from PIL import Image

torch.save(model.state_dict(), "digits_cnn.pt")
Path("mypackage").mkdir(exist_ok=True)
Path("mypackage/__init__.py").write_text("")
Path("mypackage/models.py").write_text(
    """import torch

from integrad.app.demo import digits_cnn


def classifier():
    model = digits_cnn()
    model.load_state_dict(torch.load("digits_cnn.pt"))
    return model.eval()
"""
)
Image.fromarray((images[0, 0].numpy() * 255).round().astype(np.uint8)).save("digit.png")  # 8-bit gray levels
np.savez("digits.npz", X=images[:96].numpy(), y=labels[:96].numpy())  # 96 digits, with their labels
