"""Progress on standard error (:mod:`integrad.app.progress`): a command shows a bar there, and none with
``--no-progress``."""

from __future__ import annotations

import numpy as np

from models import run_integrad


def test_progress_bar_on_stderr_and_no_progress(tmp_path, features):
    np.save(tmp_path / "x.npy", features)
    res = run_integrad(
        "explain",
        "--model",
        "cli_factories:mlp",
        "--inputs",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "a"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "ex/s" in res.stderr and "prediction" in res.stdout
    res = run_integrad(
        "explain",
        "--model",
        "cli_factories:mlp",
        "--inputs",
        str(tmp_path / "x.npy"),
        "--out",
        str(tmp_path / "b"),
        "--no-progress",
        cwd=tmp_path,
    )
    assert res.returncode == 0 and "ex/s" not in res.stderr
