"""optuna-dashboard (the `dev` extra) lists each trial's model as an artifact of the trial, and serves it."""

from __future__ import annotations

import io
import json
from wsgiref.util import setup_testing_defaults

import pytest

from autokd.models.saved import read_model
from autokd.space import space_from_dict
from autokd.study import run_search

dashboard = pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e '.[dev]')")


def get(app, path: str) -> tuple[str, bytes]:
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"], environ["REQUEST_METHOD"] = path, "GET"
    environ["wsgi.input"] = io.BytesIO(b"")
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def test_the_dashboard_lists_and_serves_trial_models(tmp_path, tiny_space):
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import _app

    sp = space_from_dict({**tiny_space, "distill": {"kd": False}})
    result = run_search(sp, storage=f"sqlite:///{tmp_path}/s.db", device="cpu", artifacts=tmp_path / "art")
    study = result.study
    app = _app.create_app(study._storage, artifact_store=FileSystemArtifactStore(tmp_path / "art"))
    status, body = get(app, f"/api/studies/{study._study_id}")
    assert status.startswith("200"), body[:200]
    trials = json.loads(body)["trials"]
    assert len(trials) == 2
    for t in trials:
        (artifact,) = t["artifacts"]
        assert artifact["filename"] == f"trial-{t['number']}.pt"
        assert artifact["artifact_id"] == study.trials[t["number"]].user_attrs["model_artifact"]
        status, blob = get(app, f"/artifacts/{study._study_id}/{t['trial_id']}/{artifact['artifact_id']}")
        assert status.startswith("200")
        model, record = read_model(blob)
        assert record["number"] == t["number"]
