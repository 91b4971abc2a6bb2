"""Unwritable places are one located line and exit 2, before anything is trained; a failed save leaves no file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autokd.objective import save_trial_model


def test_an_unusable_storage_folder(cli, space_file, tiny_space, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    res = cli("search", space_file(tiny_space), "--storage", f"sqlite:///{tmp_path}/file/s.db", "--device", "cpu")
    assert res.code == 2
    (line,) = res.error_lines
    assert line.startswith("error: --storage: cannot write to ") and "file" in line


def test_an_unusable_cache_dir_is_found_before_the_teacher_trains(cli, space_file, tiny_space, tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    res = cli("search", space_file(tiny_space), "--storage", f"sqlite:///{tmp_path}/s.db", "--device", "cpu",
              "--cache-dir", tmp_path / "cache")
    assert res.code == 2
    (line,) = res.error_lines
    assert line.startswith("error: --cache-dir: cannot write to ")
    assert "Teacher" not in res.out  # nothing was trained


def test_an_unusable_trial_folder_is_found_before_any_trial(cli, space_file, tiny_space, tmp_path):
    (tmp_path / "tiny").write_text("where the trial models would go")  # studies/<study>/ is a file
    res = cli("search", space_file(tiny_space), "--storage", f"sqlite:///{tmp_path}/s.db", "--device", "cpu")
    assert res.code == 2
    (line,) = res.error_lines
    assert line.startswith("error: trial models: cannot write to ")
    assert "trial " not in res.out.lower().replace("trial models", "")


def test_a_failed_save_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_save(obj, f):
        Path(f).write_bytes(b"half a model")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    path = tmp_path / "trials" / "0.pt"
    with pytest.raises(OSError, match="No space left"):
        save_trial_model(path, torch.nn.Linear(2, 2), number=0, params={}, settings={}, metrics={})
    assert list(path.parent.iterdir()) == []
