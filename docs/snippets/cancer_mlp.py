# The breast-cancer MLP of `integrad demo`: 30 standardised measurements of a tumour -> malignant or benign.
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from integrad.app.demo import cancer_mlp

cancer = load_breast_cancer()
train, test = train_test_split(range(len(cancer.target)), test_size=0.25, random_state=0, stratify=cancer.target)
measurements = torch.tensor(cancer.data, dtype=torch.float32)
mean, std = measurements[train].mean(0), measurements[train].std(0)
features = (measurements - mean) / std  # zero is the average training patient
diagnoses = torch.tensor(cancer.target)  # 0 malignant, 1 benign
feature_names = list(cancer.feature_names)

torch.manual_seed(0)
mlp = cancer_mlp(features.shape[1])
optimizer = torch.optim.Adam(mlp.parameters(), lr=3e-3)
for _ in range(60):
    for rows in torch.tensor(train)[torch.randperm(len(train))].split(64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(mlp(features[rows]), diagnoses[rows]).backward()
        optimizer.step()
mlp.eval().requires_grad_(False)

patients, outcomes = features[test], diagnoses[test]  # 143 held-out patients
