"""Unwritable places are one located line and exit 2, before anything is trained; a failed save leaves no file."""

from __future__ import annotations

import io

import optuna
import pytest

from autokd.study import open_artifact_store


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


def test_an_unusable_artifacts_dir_is_found_before_any_training(cli, space_file, tiny_space, tmp_path):
    (tmp_path / "store").write_text("not a folder")
    res = cli("search", space_file(tiny_space), "--storage", f"sqlite:///{tmp_path}/s.db", "--device", "cpu",
              "--artifacts", tmp_path / "store" / "sub")
    assert res.code == 2
    (line,) = res.error_lines
    assert line.startswith("error: --artifacts: cannot write to ")
    assert "Teacher" not in res.out


def test_a_failed_save_leaves_no_partial_file(tmp_path):
    """Disk full while an artifact is written: nothing is left in the store (Optuna's own folder store would
    leave a truncated file under the artifact's id)."""

    class DiskFull(io.RawIOBase):
        def __init__(self):
            self.sent = False

        def readable(self):
            return True

        def readinto(self, b):
            if self.sent:
                raise OSError(28, "No space left on device")
            self.sent = True
            b[:4] = b"half"
            return 4

    store = open_artifact_store(tmp_path / "store")
    with pytest.raises(OSError, match="No space left"):
        store.write("some-id", DiskFull())
    assert list((tmp_path / "store").iterdir()) == []


def test_a_trial_whose_model_cannot_be_saved_fails_with_the_reason(tmp_path, monkeypatch, tiny_space):
    """The upload fails (disk full): the trial FAILs with the reason and the store holds no partial file."""
    from autokd.data import load_dataset
    from autokd.objective import Objective, prepare_inputs
    from autokd.space import space_from_dict
    from autokd.study import artifacts as artifacts_mod

    sp = space_from_dict({**tiny_space, "distill": {"kd": False}})
    store = open_artifact_store(tmp_path / "store")

    def full(artifact_id, body):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "write", full)
    study = optuna.create_study(directions=["maximize", "minimize"])
    objective = Objective(sp, prepare_inputs(sp, load_dataset(sp.dataset)), device="cpu", artifacts=store)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    (t,) = study.get_trials()
    assert t.state.name == "FAIL" and "No space left on device" in t.user_attrs["fail_reason"]
    assert list((tmp_path / "store").iterdir()) == []
    assert artifacts_mod.MODEL_ATTR not in t.user_attrs
