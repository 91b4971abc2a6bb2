"""Package hygiene: the LICENSE matches pyproject's, and every third-party package that autokd imports is declared
(in the dependencies, or in the optional extra that needs it)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# Imports that need no declaration, with the reason.
UNDECLARED_OK = {
    "click": "typer's own dependency before typer 0.26 vendored it; imported only under try/except ImportError",
}
# Packages that only an optional feature needs: declared in that extra, not in a plain install.
OPTIONAL = {"onnx": "export", "onnxruntime": "export", "nni": "nni", "psycopg": "postgres"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def _imports() -> dict[str, set[str]]:
    """Top-level third-party module names imported anywhere under autokd/ -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "autokd").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "autokd" and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def _distribution(module: str) -> str:
    """The distribution that provides ``module`` (its own name, normalized, when it is not installed here)."""
    dists = importlib.metadata.packages_distributions().get(module)
    return _norm(dists[0]) if dists else _norm(module)


def test_license_matches_pyproject():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert PROJECT["license"] == "MIT"
    assert text.startswith("MIT License")
    assert "Copyright (c) 2026 the autokd authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_every_imported_package_is_declared():
    core = {_requirement_name(r) for r in PROJECT["dependencies"]}
    extras = {extra: {_requirement_name(r) for r in reqs}
              for extra, reqs in PROJECT.get("optional-dependencies", {}).items()}
    declared = core.union(*extras.values())
    imports = _imports()
    assert {"numpy", "scipy", "torch", "optuna"} <= set(imports)  # the scan sees what it should
    missing = {module: sorted(files) for module, files in imports.items()
               if module not in UNDECLARED_OK and _distribution(module) not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_optional_packages_are_declared_in_their_extra_only():
    core = {_requirement_name(r) for r in PROJECT["dependencies"]}
    extras = PROJECT.get("optional-dependencies", {})
    for package, extra in OPTIONAL.items():
        assert package in {_requirement_name(r) for r in extras.get(extra, [])}, f"{package} not in [{extra}]"
        assert package not in core, f"{package} is optional: keep it out of the plain dependencies"
