"""The engine: gradients of a probe along a path, in memory-budgeted chunks, reduced as a method asks.

* :mod:`.evaluate` — points, the chunk loop and the reductions (the numerics).
* :mod:`.chunking` — how many rows go into one pass: row counts, memory budgets, the meter, allocation failures.
* :mod:`.tuning` — what an attribution object learns across calls (chunk speed on a CPU, point buffers).
* :mod:`.adaptive` — ``n_steps="auto"``, the error-controlled rule.
"""

from .adaptive import integrate_adaptive
from .chunking import Chunking, default_budget, is_out_of_memory, parse_bytes, run_chunked
from .evaluate import (
    IntegrationReport,
    PathIntegral,
    Probe,
    Reduction,
    RowGradients,
    Rows,
    WeightedSum,
    evaluate_rows,
    gradients_at,
    integrate,
    method_rows,
    probe_values,
    rule_rows,
    writes_into_leaf,
)
from .tuning import RowShapeMemory, RowShapes

__all__ = [
    "Chunking",
    "IntegrationReport",
    "PathIntegral",
    "Probe",
    "Reduction",
    "RowGradients",
    "RowShapeMemory",
    "RowShapes",
    "Rows",
    "WeightedSum",
    "default_budget",
    "evaluate_rows",
    "gradients_at",
    "integrate",
    "integrate_adaptive",
    "is_out_of_memory",
    "method_rows",
    "parse_bytes",
    "probe_values",
    "rule_rows",
    "run_chunked",
    "writes_into_leaf",
]
