"""Fixtures shared by the test modules (pytest finds them here; a module asks for one by name, or with
``pytestmark = pytest.mark.usefixtures(...)``), and where a test goes.

**One test module per source module**, named after it: ``src/integrad/[<package>/]<module>.py`` is tested in
``tests/test_<module>.py``, or in ``tests/test_<package>_<module>.py`` where the bare name is ambiguous because another
module or package under ``src/integrad`` has the same name (``engine/evaluate`` and the ``evaluate`` package;
``base`` and ``integrated_gradients`` in both ``methods`` and ``explainers``). A private module is named without its
underscore. A module that only re-exports under a public path (``__init__``, ``__main__``, ``datasets``, ``metrics``,
``tune``, ``visualize``) needs no module of its own; where one exists it stays.

- top level: ``arguments``, ``paths``, ``probes``, ``rules`` → ``test_<module>``; ``visualize`` → ``test_visualize``
  (the public path's names).
- ``engine/``: ``adaptive`` → ``test_adaptive`` (and ``test_adaptive_pl``), ``chunking`` → ``test_chunking``,
  ``evaluate`` → ``test_engine_evaluate``, ``tuning`` → ``test_tuning``.
- ``evaluate/``: ``metrics`` → ``test_metrics``, ``tune`` → ``test_tune`` (through their public paths
  ``integrad.metrics`` and ``integrad.tune``, one module each).
- ``explainers/``: ``base`` → ``test_explainers_base``, ``baselines`` → ``test_baselines``, ``core`` → ``test_core``,
  ``integrated_gradients`` → ``test_explainers_integrated_gradients``, ``resolve`` → ``test_resolve``, ``support`` →
  ``test_support``, ``variants`` → ``test_variants``.
- ``methods/``: ``base`` → ``test_methods_base``, ``integrated_gradients`` → ``test_methods_integrated_gradients``,
  ``path`` → ``test_path``; every other method → ``test_<module>`` (``blur``, ``conductance``, ``discretized``,
  ``expected_gradients``, ``generation``, ``gradient_shap``, ``guided``, ``idgi``, ``internal_influence``, ``layer``
  (and ``test_layer_expand``), ``neuron``, ``noise_tunnel``, ``sequential``, ``xrai``).
- ``app/``: ``cli`` → ``test_cli`` (and ``test_cli_methods``, ``test_cli_text``), ``demo`` → ``test_demo``, ``files``
  → ``test_files``, ``io`` → ``test_io``, ``jobs`` → ``test_jobs`` (also ``integrad.datasets``' names), ``progress``
  → ``test_progress``.
- ``viz/``: ``_checks`` → ``test_checks``, ``_figures`` → ``test_figures``, ``features``, ``images``, ``integrand``,
  ``report``, ``text`` → ``test_<module>``.

A module too large for one file is split by aspect as ``test_<module>_<aspect>``: ``test_adaptive_pl`` (piecewise-
linear integrands), ``test_layer_expand`` (``expand_at_layer``), ``test_cli_methods`` (``--method``),
``test_cli_text`` (``explain-text``).

**Cross-cutting behaviour** across many modules has modules of its own: ``test_captum_agreement``,
``test_signatures``, ``test_state``, ``test_threads``, ``test_compile``, ``properties/test_axioms``, ``test_demo``,
``test_docs``, ``test_readme``, ``test_tutorial``, ``test_report_browser``.

What several modules use lives here (fixtures) or in ``models.py`` (models, references, helpers), never imported from
another test module. A module may override a fixture here with its own of the same name (``setup`` in
test_arguments, ``data`` in test_layer_expand, ``batch`` in test_variants).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import WIDE, B, deep_mlp, mlp


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one thread, restoring the setting afterwards.

    On a shared 2-core machine every multi-threaded ATen call (even ``index_add_`` of a few floats) can wait a whole
    scheduler slice for its second thread; one thread is both faster and steadier for models this small.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def data():
    """The engine's tests (chunking, tuning, evaluate): ``deep_mlp(hidden=32)``, B inputs and one baseline."""
    g = torch.Generator().manual_seed(3)
    return deep_mlp(hidden=32), torch.randn(B, 6, generator=g), torch.randn(1, 6, generator=g)


@pytest.fixture(scope="module")
def wide():
    """A model whose hidden activations (WIDE units) dominate a row's memory, and six inputs: for memory budgets."""
    torch.manual_seed(0)
    return mlp(n_in=16, hidden=WIDE, n_out=3), torch.randn(6, 16)


# ---------------------------------------------------------------------------------------------------------------- paths
def _path_model(seed: int = 0, n_in: int = 5, n_out: int = 3) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(n_in, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, n_out))
    return net.double().eval()


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def setup():
    """The path tests (test_paths, test_path): a float64 tanh network, inputs x, baselines, a direction v off the
    straight line, and a target per example."""
    model = _path_model()
    x, base, v = _randn(4, 5, seed=1), _randn(4, 5, seed=2) * 0.1, _randn(4, 5, seed=3)
    target = torch.tensor([0, 1, 2, 0])
    return model, x, base, v, target


# ------------------------------------------------------------------------------------------------------- the digits CNN
@pytest.fixture(scope="module")
def trained():
    """The trained digits CNN and its data (``trained.digits``, trained once per process)."""
    from trained import digits

    return digits()


@pytest.fixture(scope="module")
def batch(trained):
    """Six test images of the digits and their labels (test_variants takes four, with a ``batch`` of its own)."""
    return trained.test_x[:6], trained.test_y[:6]


# ----------------------------------------------------------------------------------------------------- the command line
@pytest.fixture
def features(tmp_path):
    """Five examples of ``cli_factories``' tabular models' features (test_cli, test_progress)."""
    import cli_factories as fm

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, fm.N_FEATURES)).astype(np.float32)
    return X
