"""Evaluating attributions: :mod:`.metrics` (faithfulness, robustness, complexity) and :mod:`.tune` (choosing an
explainer's settings by a metric)."""
