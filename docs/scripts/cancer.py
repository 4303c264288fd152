"""The breast-cancer MLP: mean absolute integrated gradients of each measurement over the held-out patients, from
the average training patient (zero after standardisation)."""

from _common import example, save

from integrad import IntegratedGradients, visualize

names = example("cancer_mlp")
mlp, patients, feature_names = names["mlp"], names["patients"], names["feature_names"]
predicted = mlp(patients).argmax(1)
attributions = IntegratedGradients(mlp).attribute(patients, target=predicted, n_steps="auto")
ax = visualize.feature_bars(
    attributions.abs().mean(0),
    feature_names,
    top_k=12,
    title=f"Breast-cancer MLP: mean |attribution| over {len(patients)} held-out patients",
)
save(ax, "cancer-global.png")
