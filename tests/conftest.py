"""Shared fixtures of the autokd test suite.

- every test session gets its own teacher cache (``AUTOKD_CACHE_DIR``), so each teacher is trained at most once
  per session and nothing is written into the repository;
- ``space_file`` writes a YAML space into the test's temporary folder;
- ``tiny_space`` is a valid space small enough to train in seconds on a CPU;
- ``cli`` runs ``autokd.cli.main`` (the CLI's error boundary) and returns exit code, stdout and stderr;
  ``main_runner`` does the same by redirection, for fixtures wider than a function;
- ``runner`` is typer's CliRunner (it bypasses ``main``: use it for happy-path output of ``autokd.cli.app`` only);
- torch runs on one intra-op thread during the session (tiny models on a busy 2-core machine);
- ``postgres_url`` is a real PostgreSQL database (``$AUTOKD_TEST_POSTGRES``; skipped when unset, failed under
  ``CI=true``), ``postgres_study`` a study name of its own in it.
"""

from __future__ import annotations

import copy
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY_SPACE: dict[str, Any] = {
    "version": 1,
    "name": "tiny",
    "dataset": {"name": "digits", "image_size": 8},
    "model": {"family": "mobilenetv2", "width_mult": {"choices": [0.25, 0.5]}},
    "distill": {"kd": {"choices": [True, False]}, "teacher": {"family": "resnet", "width": 8, "epochs": 1}},
    "train": {"epochs": 1},
    "search": {"n_trials": 2},
}

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@pytest.fixture(scope="session", autouse=True)
def _session_teacher_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the teacher cache at a per-session folder (restored afterwards)."""
    cache = tmp_path_factory.mktemp("teacher-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOKD_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The test machines have 2 cores and run other work beside the suite: tiny models train several times
    faster on one intra-op thread than with two threads fighting other processes. Restored afterwards.
    Only where torch is already imported by the collected tests (a torch-free run does not pay for it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_space() -> dict[str, Any]:
    """A fresh copy of a valid, tiny space (digits at 8 px, MobileNetV2 width {0.25, 0.5}, KD on/off, teacher
    width 8 trained 1 epoch, students trained 1 epoch, 2 trials)."""
    return copy.deepcopy(TINY_SPACE)


@pytest.fixture
def space_file(tmp_path: Path):
    """``space_file(text_or_dict, name="space.yaml") -> Path``: write a YAML space into ``tmp_path``.

    A string is dedented and written as is (so that line numbers are exactly the ones in the test); a dict is
    dumped with ``yaml.safe_dump`` in insertion order.
    """

    def write(content: str | dict, name: str = "space.yaml") -> Path:
        path = tmp_path / name
        if isinstance(content, dict):
            text = yaml.safe_dump(content, sort_keys=False)
        else:
            text = textwrap.dedent(content).lstrip("\n")
        path.write_text(text, encoding="utf-8")
        return path

    return write


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err_lines if line.startswith("error: ")]


def run_main(*args: Any) -> CliResult:
    """``autokd.cli.main`` with stdout/stderr captured by redirection (usable where capsys is not)."""
    import contextlib
    import io

    from autokd.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, strip_ansi(out.getvalue()), strip_ansi(err.getvalue()))


@pytest.fixture(scope="session")
def main_runner():
    """``run_main`` as a fixture: ``main_runner(*args) -> CliResult`` (any scope; set COLUMNS yourself)."""
    return run_main


@pytest.fixture(scope="session")
def tiny_space_data() -> dict[str, Any]:
    """The tiny space as a session-scoped fixture (for module-scoped fixtures); do not modify it."""
    return copy.deepcopy(TINY_SPACE)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """``cli(*args) -> CliResult``: run ``autokd.cli.main(list(args))`` with wide, colourless output."""
    from autokd.cli import main

    monkeypatch.setenv("COLUMNS", "1000")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("AUTOKD_DEBUG", raising=False)

    def run(*args: Any) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, strip_ansi(out), strip_ansi(err))

    return run


@pytest.fixture
def runner():
    """typer's CliRunner (bypasses ``main``'s error boundary: use for happy-path output of ``autokd.cli.app``)."""
    from typer.testing import CliRunner

    return CliRunner()


POSTGRES_ENV = "AUTOKD_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of a real PostgreSQL database for the tests (``$AUTOKD_TEST_POSTGRES``, e.g.
    ``postgresql+psycopg://postgres@127.0.0.1:54329/autokd_test``; ``.ci/run`` starts one), checked to answer.

    Unset: the test skips with the reason, except under ``CI=true`` where it fails (CI must run these tests).
    Set but unusable (no psycopg, no server there): the test fails with the reason."""
    import os

    url = os.environ.get(POSTGRES_ENV, "")
    if not url:
        why = f"{POSTGRES_ENV} is not set: start a server, see README 'Many workers'"
        if os.environ.get("CI") == "true":  # .ci/run starts a server: its absence there is a failure
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    try:
        import sqlalchemy

        driver = sqlalchemy.engine.make_url(url).get_driver_name()
        quick = {"connect_args": {"connect_timeout": 10}} if driver in ("psycopg", "psycopg2") else {}
        engine = sqlalchemy.create_engine(url, **quick)
        try:
            with engine.connect() as con:
                con.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except ModuleNotFoundError as exc:
        pytest.fail(f"{POSTGRES_ENV} is set but {exc.name} is missing: pip install -e '.[postgres]' (make test does)")
    except Exception as exc:  # sqlalchemy wraps the driver's errors; one line is enough to see why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        pytest.fail(f"{POSTGRES_ENV}={url} does not answer: {reason}")
    return url


@pytest.fixture
def postgres_study(postgres_url: str):
    """A study name of its own in the ``postgres_url`` database (``t_<uuid>``: tests, and reruns against the same
    server, never share a study); the study is deleted afterwards if the test made it."""
    import uuid

    import optuna

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        if name in optuna.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def load_bench(name: str) -> Any:
    """The module ``bench/<name>.py`` (bench scripts are not a package): tests call their functions."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses in the module look themselves up there
    spec.loader.exec_module(module)
    return module
