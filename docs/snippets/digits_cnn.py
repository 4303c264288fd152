# The digits CNN of `integrad demo`, trained for a few seconds on scikit-learn's 8×8 handwritten digits.
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from integrad.app.demo import digits_cnn

digits = load_digits()
pixels = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8), values in [0, 1]
classes = torch.tensor(digits.target)
train, test = train_test_split(torch.arange(len(classes)), test_size=0.25, random_state=0, stratify=digits.target)

torch.manual_seed(0)
model = digits_cnn()
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(4):
    for rows in train[torch.randperm(len(train))].split(64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(pixels[rows]), classes[rows]).backward()
        optimizer.step()
model.eval().requires_grad_(False)  # attributions need gradients for the inputs, not for the weights

images, labels = pixels[test], classes[test]  # 450 held-out digits
