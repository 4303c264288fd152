"""Atomic file writes (:mod:`integrad.app.files`): a write that fails leaves the old file and no temporary file."""

from __future__ import annotations

import pytest

from integrad.app.files import atomic_write_bytes


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # the write fails after the temporary file exists
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
