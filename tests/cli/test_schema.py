"""``autokd schema``, the schema file kept in the repository and the example spaces that point at it;
``autokd --version``; shell completion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from autokd.space.jsonschema import REGENERATE, SCHEMA_PATH, space_json_schema, space_json_schema_text
from autokd.space.yamlio import _read_yaml

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "spaces").glob("*.yaml"))
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")
AUTOKD = Path(sys.executable).with_name("autokd")  # the console script of this environment


def test_schema_prints_the_json_schema(cli):
    res = cli("schema")
    assert res.code == 0, res.err
    assert json.loads(res.out) == space_json_schema()
    assert res.out == space_json_schema_text()


def test_schema_output_validates_every_space_and_rejects_an_unknown_key(cli, space_file):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(cli("schema").out)
    validator = jsonschema.validators.validator_for(schema)(schema)
    for path in SPACES:
        data, _ = _read_yaml(path)
        assert validator.is_valid(data), path.name
    data, _ = _read_yaml(space_file("version: 1\nname: x\ntrain:\n  epochs: 2\n  epoch: 2\n"))
    errors = list(validator.iter_errors(data))
    assert len(errors) == 1 and list(errors[0].absolute_path) == ["train"]
    assert "'epoch' was unexpected" in errors[0].message


def test_schema_writes_a_file_and_says_so(cli, tmp_path):
    target = tmp_path / "out" / "space.schema.json"
    res = cli("schema", "-o", target)
    assert res.code == 0, res.err
    assert target.read_text(encoding="utf-8") == space_json_schema_text()
    assert str(target) in res.out and "wrote" in res.out
    assert cli("schema", "--output", target).code == 0  # overwrites


def test_schema_reports_a_file_it_cannot_write(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = cli("schema", "-o", blocker / "space.schema.json")
    assert res.code == 2
    assert res.error_lines and "cannot write the schema" in res.error_lines[0]


def test_the_schema_file_in_the_repository_is_up_to_date():
    kept = REPO / SCHEMA_PATH
    assert kept.is_file(), f"{SCHEMA_PATH} is missing: run `{REGENERATE}`"
    assert kept.read_text(encoding="utf-8") == space_json_schema_text(), \
        f"{SCHEMA_PATH} is out of date with the space models: run `{REGENERATE}` and commit it"


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_example_space_points_its_editor_at_the_schema(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    m = MODELINE.match(first)
    assert m, f"{path.name} must start with '# yaml-language-server: $schema=../{SCHEMA_PATH}'"
    # yaml-language-server resolves a relative $schema against the YAML file's folder
    assert (path.parent / m.group(1)).resolve() == (REPO / SCHEMA_PATH).resolve()


# ------------------------------------------------------------------------------------------------
# --version


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(cli, flag):
    import autokd

    res = cli(flag)
    assert res.code == 0
    assert res.out == f"autokd {autokd.__version__}\n"


def test_the_version_is_the_one_in_pyproject():
    import autokd

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    if "version" in project.get("dynamic", []):  # single-sourced: setuptools reads autokd.__version__
        assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "autokd.__version__"}
    else:
        assert autokd.__version__ == project["version"], "autokd/__init__.py and pyproject.toml disagree"


# ------------------------------------------------------------------------------------------------
# Shell completion


def _complete(cli, monkeypatch, words: str) -> list[str]:
    monkeypatch.setenv("_AUTOKD_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", words)
    monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - (0 if words.endswith(" ") else 1)))
    res = cli()
    assert res.code == 0, res.err
    return res.out.split()


def test_completion_of_commands_and_options(cli, monkeypatch):
    assert {"schema", "search", "studies"} <= set(_complete(cli, monkeypatch, "autokd s"))
    assert "validate" not in _complete(cli, monkeypatch, "autokd s")
    assert _complete(cli, monkeypatch, "autokd validate --j") == ["--json"]
    assert "--output" in _complete(cli, monkeypatch, "autokd schema --")


def test_completion_through_the_console_script(tmp_path):
    if not AUTOKD.exists():
        pytest.skip(f"no console script at {AUTOKD} (install with pip install -e .)")
    env = {**os.environ, "_AUTOKD_COMPLETE": "complete_bash", "COMP_WORDS": "autokd sc", "COMP_CWORD": "1"}
    res = subprocess.run([str(AUTOKD)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["schema"]


@pytest.mark.parametrize("shell, expected", [
    ("bash", "complete -o default -F _autokd_completion autokd"),
    ("zsh", "compdef _autokd_completion autokd"),
    ("fish", "complete --command autokd"),
])
def test_show_completion(cli, monkeypatch, shell, expected):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")  # name the shell instead
    res = cli("--show-completion", shell)
    assert res.code == 0, res.err
    assert expected in res.out and "_AUTOKD_COMPLETE=complete_" in res.out


def test_install_completion_writes_the_script_and_sources_it(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    res = cli("--install-completion", "bash")
    assert res.code == 0, res.err
    script = tmp_path / ".bash_completions" / "autokd.sh"
    assert "_AUTOKD_COMPLETE=complete_bash" in script.read_text()
    assert str(script.relative_to(tmp_path)) in (tmp_path / ".bashrc").read_text()


def test_help_lists_version_and_completion(cli):
    res = cli("--help")
    assert res.code == 0
    for flag in ("--version", "--install-completion", "--show-completion", "schema"):
        assert flag in res.out
