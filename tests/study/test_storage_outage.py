"""Workers outlast their storage: a PostgreSQL server stopped for 20 s while two workers train, and one kept down
past ``--storage-retry``; a SQLite file held locked by another process while two workers run.

These tests start their own PostgreSQL server (``initdb`` in a temporary folder, as ``.ci/run`` does: they must
stop and start it). Without the server binaries (``/usr/lib/postgresql/*/bin``) they skip with the reason, and
fail under ``CI=true``."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from autokd.study import load_study
from tests.study.test_many_workers import autokd, check_study, env, many_space


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A throw-away PostgreSQL cluster in ``folder``, run as the ``postgres`` user when the tests run as root."""

    def __init__(self, folder: Path):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        why = None
        if not bins or not os.access(os.path.join(bins[-1], "initdb"), os.X_OK):
            why = "no PostgreSQL server binaries in /usr/lib/postgresql (apt-get install postgresql)"
        elif os.geteuid() == 0 and shutil.which("runuser") is None:
            why = "running as root without runuser: the server refuses to run as root"
        if why is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but {why}")
            pytest.skip(why)
        self.bin, self.folder, self.port = Path(bins[-1]), folder, _free_port()
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        self._run("initdb", "-D", str(folder / "db"), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                  "--no-sync")
        with open(folder / "db" / "postgresql.conf", "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{folder}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
        self.start()
        subprocess.run([str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "autokd"], check=True)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/autokd"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, cwd="/", stdout=subprocess.DEVNULL)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.folder / "db"), "-l", str(self.folder / "server.log"), "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.folder / "db"), "-m", mode, "-w", "stop")


@pytest.fixture(scope="module")
def pg():
    pytest.importorskip("psycopg", reason="psycopg is missing: pip install -e '.[postgres]' (make test does)")
    # directly under /tmp, not pytest's folder: as root the server runs as `postgres`, which cannot enter root's
    # private pytest folders
    folder = Path(tempfile.mkdtemp(prefix="autokd-pg-"))
    try:
        server = PgServer(folder)
        yield server
        try:
            server.stop("immediate")
        except subprocess.CalledProcessError:
            pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _space(tiny_space: dict, n_trials: int) -> dict:
    # 1 epoch at 16 px: a trial lasts seconds, so a 20 s outage covers whole trials and their tells
    space = many_space(tiny_space, n_trials=n_trials, epochs=1)
    space["dataset"] = {"name": "digits", "image_size": 16}
    return space


def _running(url: str, study: str) -> int:
    """RUNNING trials in training (their settings are recorded just before; read straight from the database; 0
    if unreadable)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as con:
            return con.execute(sqlalchemy.text(
                "SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'settings' "
                "WHERE s.study_name = :n AND t.state = 'RUNNING'"), {"n": study}).scalar_one()
    except Exception:  # the tables may not exist yet
        return 0
    finally:
        engine.dispose()


@contextlib.contextmanager
def _two_workers(tmp_path: Path, path: Path, common: list):
    """Two workers (``--worker-index`` 0 and 1) of ``autokd search path *common``, logging to ``w0.log``/``w1.log``;
    killed on the way out if still running."""
    logs = [open(tmp_path / f"w{i}.log", "w") for i in range(2)]
    procs = [subprocess.Popen(autokd(path, *common, "--worker-index", i), stdout=logs[i],
                              stderr=subprocess.STDOUT, text=True, env=env()) for i in range(2)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def _both_succeed(procs: list, tmp_path: Path) -> list[str]:
    """Wait for both workers; they exit 0; their outputs."""
    codes = [p.wait(timeout=600) for p in procs]
    outputs = [(tmp_path / f"w{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], outputs
    return outputs


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_two_workers_outlast_a_postgres_restart(tmp_path, space_file, tiny_space, pg):
    path = space_file(_space(tiny_space, n_trials=4))
    study = f"outage-{uuid.uuid4().hex[:8]}"
    common = ["--storage", pg.url, "--study", study, "--device", "cpu", "--threads", 1,
              "--cache-dir", tmp_path / "cache", "--artifacts", tmp_path / "artifacts"]
    with _two_workers(tmp_path, path, common) as procs:
        _wait_for(lambda: _running(pg.url, study) >= 2, 300, "both workers should be training a trial")
        pg.stop("fast")  # drops every connection, refuses new ones
        try:
            time.sleep(20)  # longer than a trial: both finish training and wait to tell
        finally:
            pg.start()
        outputs = _both_succeed(procs, tmp_path)
    for out in outputs:
        assert "waiting for the storage postgresql+psycopg://postgres@127.0.0.1" in out, out
        assert "is back after" in out, out
    # target reached, pairs whole, nothing COMPLETE twice, nothing RUNNING
    trials = check_study(pg.url, study, workers=2, n_trials=4)
    states = Counter(t.state.name for t in trials)
    assert states.get("FAIL", 0) == 0, states  # no trial failed because of the outage


def test_a_worker_past_its_retry_budget_exits_75_and_a_rerun_completes(tmp_path, space_file, tiny_space, pg):
    path = space_file(_space(tiny_space, n_trials=2))
    study = f"down-{uuid.uuid4().hex[:8]}"
    cmd = autokd(path, "--storage", pg.url, "--study", study, "--device", "cpu", "--threads", 1,
                 "--cache-dir", tmp_path / "cache", "--storage-retry", 3)
    out, err = open(tmp_path / "out", "w"), open(tmp_path / "err", "w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env())
    stopped = False
    try:
        _wait_for(lambda: _running(pg.url, study) >= 1, 300, "the worker should be training a trial")
        pg.stop("fast")
        stopped = True
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        if stopped:
            pg.start()
    lines = [line for line in (tmp_path / "err").read_text().splitlines() if line.strip()]
    assert code == 75, (tmp_path / "out").read_text() + "\n".join(lines)
    assert len(lines) == 1, lines
    assert "did not answer for 3 s" in lines[0] and "resume with: autokd search" in lines[0]
    assert "postgresql+psycopg://postgres@127.0.0.1" in lines[0]

    again = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    st, _ = load_study(storage=pg.url, study_name=study)
    trials = st.get_trials()
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) <= 1, [(t.number, t.user_attrs.get("fail_reason")) for t in failed]
    for held in failed:  # the trial the stopped worker held, failed and re-queued by the rerun ...
        retry = [t for t in trials if t.user_attrs.get("retry_of") == held.number]
        if not held.params and not held.system_attrs.get("fixed_params"):
            # ... unless the outage came before its params were written (between its ask and its first suggest):
            # nothing was trained, nothing to retry (the sampler proposes anew)
            assert not retry, held.user_attrs
            assert any(w in held.user_attrs["fail_reason"] for w in ("orphan", "the storage did not answer"))
            continue
        assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
        assert retry[0].user_attrs["retry_count"] == 0  # ... as a retry that does not count against it
        assert "the storage did not answer" in retry[0].user_attrs["retry_reason"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2


@pytest.mark.slow  # ~40 s; tests/study/test_retry.py checks a locked SQLite file in process within make test
def test_two_workers_wait_out_a_locked_sqlite_file(tmp_path, space_file, tiny_space):
    path = space_file(_space(tiny_space, n_trials=4))
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    common = ["--storage", url, "--device", "cpu", "--threads", 1, "--cache-dir", tmp_path / "cache"]
    with _two_workers(tmp_path, path, common) as procs:
        def both_training() -> bool:
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
                try:
                    return con.execute(
                        "SELECT count(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                        "AND a.key = 'settings' WHERE t.state = 'RUNNING'").fetchone()[0] >= 2
                finally:
                    con.close()
            except sqlite3.Error:
                return False

        _wait_for(both_training, 300, "both workers should be training a trial")
        # Another process (here: a thread's own connection) holds the file for longer than SQLite's own wait and
        # than a trial, as a backup tool or a stuck sqlite3 shell would.
        held = threading.Event()

        def hold() -> None:
            con = sqlite3.connect(db, isolation_level=None, timeout=30)
            con.execute("BEGIN EXCLUSIVE")
            held.set()
            # longer than a trial plus SQLite's own 5 s wait: each worker's next write waits past it, and the
            # storage retries and says so
            time.sleep(20)
            con.execute("COMMIT")
            con.close()

        holder = threading.Thread(target=hold)
        holder.start()
        assert held.wait(30)
        holder.join()
        outputs = _both_succeed(procs, tmp_path)
    for out in outputs:
        assert f"waiting for the storage {url}" in out and "database is locked" in out, out
    trials = check_study(url, "many", workers=2, n_trials=4)
    assert not [t for t in trials if t.state == TrialState.FAIL]
