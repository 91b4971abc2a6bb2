"""Both validation stages turned into one located line per problem: ``SPACE.yaml:LINE: dotted.path: what is
wrong (valid: ...)``."""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from autokd.errors import Problem, SpaceError, hint

from autokd.space.checks import CHECKS, MACHINE_CHECKS
from autokd.space.dimensions import set_path
from autokd.space.schema import Space
from autokd.space.yamlio import parse_overrides

def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (for listing valid field names)."""
    model: Any = Space
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _clean_loc(loc: Sequence[Any], *, keep_last: bool = False) -> tuple:
    # Drop discriminator tags ("<fixed>") and pydantic's generic/union member names ("Choices[float]"). The last
    # element of an unknown-field error is the user's key, whatever it looks like ('[' is a valid YAML key).
    head, tail = (loc[:-1], tuple(loc[-1:])) if keep_last else (loc, ())
    return tuple(p for p in head if not (isinstance(p, str) and (p.startswith("<") or "[" in p))) + tail


_DIMENSION_FIELDS = {"<choices>": ["choices"], "<range>": ["low", "high", "step", "log"]}


def _message(err: dict[str, Any], loc: tuple) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        tags = [p for p in err["loc"] if isinstance(p, str) and p in _DIMENSION_FIELDS]
        if tags:  # inside {choices: ...} or {low: ..., high: ...}
            valid = _DIMENSION_FIELDS[tags[-1]]
        else:
            model = _model_at(loc)
            valid = list(model.model_fields) if model else []
        return f"unknown field{hint(loc[-1], valid)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'|(\d+)", ctx.get("expected", ""))
        options = [a or b for a, b in expected]
        return f"{value!r} is not valid{hint(value, options)}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return msg
    if kind == "string_pattern_mismatch":
        msg = "use letters, digits, '.', '_' and '-' only"
    shown = value if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{msg[0].lower()}{msg[1:]} (got {shown!r})"


def _locate(loc: tuple, lines: dict[tuple, int]) -> int | None:
    # YAML keys are kept as written (strings); pydantic reports an int key as an int.
    by_text = {tuple(map(str, k)): v for k, v in lines.items()}
    for n in range(len(loc), -1, -1):
        key = tuple(map(str, loc[:n]))
        dotted_key = key + (".".join(map(str, loc[n:])),)  # a key that holds dots (search.design.levels.train.lr)
        if n < len(loc) - 1 and dotted_key in by_text:
            return by_text[dotted_key]
        if key in by_text:
            return by_text[key]
    return None


def _problem(loc: tuple, message: str, source: str | None, lines: dict[tuple, int],
             overrides: list[tuple[str, Any, str]]) -> Problem:
    dotted = ".".join(str(p) for p in loc)
    for path, _, text in reversed(overrides):
        if dotted == path or dotted.startswith(path + ".") or path.startswith(dotted + "."):
            return Problem(message, dotted, file=f"--set {text}")
    return Problem(message, dotted, file=source, line=_locate(loc, lines) if source else None)


def validate_data(data: Any, *, source: str | None = None, lines: dict[tuple, int] | None = None,
                  overrides: Sequence[str] = (), machine: bool | None = None) -> Space:
    """Validate already-parsed data (+ overrides) in both stages; raise one SpaceError with every problem.

    ``machine``: also run :data:`~autokd.space.checks.MACHINE_CHECKS` (does the data fit in this machine's
    memory?). By default they run on a space read from a file (``source`` given: ``load_space``, ``autokd
    validate``, ``autokd search``) and not on plain data (``space_from_dict``: a space stored in a study, which
    must stay readable on a smaller machine, e.g. for a report)."""
    lines = lines or {}
    parsed = parse_overrides(overrides)
    if not isinstance(data, dict):
        raise SpaceError(Problem("a space must be a mapping (key: value lines) starting with 'version: 1'",
                                 file=source, line=1 if source else None))
    data = copy.deepcopy(data)
    for path, value, _ in parsed:
        set_path(data, path.split("."), value)
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        typos = {(_clean_loc(e["loc"], keep_last=True)[:-1], m) for e in errors if e["type"] == "extra_forbidden"
                 for m in difflib.get_close_matches(str(e["loc"][-1]), ["choices", "low", "high"], n=1, cutoff=0.6)}
        problems = []
        for err in errors:
            loc = _clean_loc(err["loc"], keep_last=err["type"] == "extra_forbidden")
            if err["type"] == "missing" and (loc[:-1], loc[-1]) in typos:
                continue
            problems.append(_problem(loc, _message(err, loc), source, lines, parsed))
        raise SpaceError(_dedupe(problems)) from None
    problems = []
    run_machine_checks = source is not None if machine is None else machine
    for check in CHECKS + (MACHINE_CHECKS if run_machine_checks else []):
        for dotted, message in check(space):
            loc = tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
            problems.append(_problem(loc, message, source, lines, parsed))
    if problems:
        raise SpaceError(_dedupe(problems))
    space._source = source
    return space


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if str(p) not in seen:
            seen.add(str(p))
            out.append(p)
    return out

