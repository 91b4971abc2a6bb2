"""YAML with line numbers (YAML 1.2 numbers and booleans, duplicate keys, hostile documents refused with
their line) and ``--set`` overrides."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from autokd.errors import Problem, SpaceError


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-3`` is a float, not a string) and duplicate-key detection."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


# YAML 1.2 booleans: true/false only ("no", "on", "yes", "off" stay strings, as in YAML 1.2).
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every path in a composed YAML document to the 1-based line where it is written."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            out[path + (key,)] = key_node.start_mark.line + 1
            _line_map(value_node, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), out)
    return out


def _duplicate_keys(node: yaml.Node, path: tuple = ()) -> Iterator[tuple[tuple, int]]:
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if key_node.value in seen:
                yield path + (key_node.value,), key_node.start_mark.line + 1
            seen.add(key_node.value)
            yield from _duplicate_keys(value_node, path + (key_node.value,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, path + (i,))


def parse_yaml_value(text: str) -> Any:
    """Parse one ``--set`` value with the same YAML rules (and the same limits) as the space file."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_YAML_DEPTH} levels deep") from None
    if node is not None:
        size, cycle = _node_stats(node)
        if cycle is not None:
            raise ValueError("an alias refers to the node that contains it")
        if size > MAX_YAML_NODES or _depth(node) > MAX_YAML_DEPTH:
            raise ValueError(f"too large or too deeply nested (at most {MAX_YAML_NODES:,} values, "
                             f"{MAX_YAML_DEPTH} levels)")
    return yaml.load(text, Loader=_Loader)


MAX_YAML_NODES = 100_000  # after alias expansion: a space is a few hundred; more is an alias bomb
MAX_YAML_DEPTH = 100  # nesting; PyYAML recurses per level and fails near 450


def _line_of_depth(text: str, limit: int) -> int:
    """The line where bracket or indentation nesting first passes ``limit`` (1 if never)."""
    depth = 0
    for number, line in enumerate(text.splitlines(), 1):
        for ch in line:
            depth += ch in "[{"
            depth -= ch in "]}"
            if depth > limit:
                return number
    return 1


def _node_stats(node: yaml.Node) -> tuple[int, int | None]:
    """(size after alias expansion, line of a node that contains itself or None); shared nodes are counted once
    per use but walked once (memoised), so an alias bomb is measured without being expanded."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    cycle: list[int] = []

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            cycle.append(n.start_mark.line + 1)
            return 0
        on_path.add(key)
        if isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in n.value)
        else:
            total = 1
        on_path.discard(key)
        sizes[key] = min(total, 10 * MAX_YAML_NODES)
        return sizes[key]

    total = size(node)
    return total, (cycle[0] if cycle else None)


def _nodes(node: yaml.Node) -> Iterator[yaml.Node]:
    """Every node of a composed document once, in document order (shared alias nodes once; cycles are safe)."""
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        if isinstance(n, yaml.MappingNode):
            stack.extend(c for pair in reversed(n.value) for c in reversed(pair))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(reversed(n.value))


def _bad_scalar_line(loader: yaml.SafeLoader, node: yaml.Node) -> int | None:
    """The line of the first node whose value cannot be constructed (a bad ``!!tag``, a huge integer, ...)."""
    for n in _nodes(node):
        try:
            if isinstance(n, yaml.MappingNode):
                if n.tag == "tag:yaml.org,2002:map":
                    loader.construct_mapping(n, deep=False)  # merge keys (<<) fail here
            elif not isinstance(n, yaml.SequenceNode):
                loader.construct_object(n, deep=True)
        except Exception:
            return n.start_mark.line + 1
    return None


def _yaml_problem(exc: Exception, name: str, text: str) -> Problem:
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        line = mark.line + 1
    elif isinstance(getattr(exc, "position", None), int):  # ReaderError: a control character
        line = text[:exc.position].count("\n") + 1
    else:
        line = 1
    what = getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
    return Problem(f"YAML syntax error: {what}", file=name, line=line)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, int]]:
    name = str(path)
    if not path.exists():
        raise SpaceError(Problem("no such file", file=name))
    if path.is_dir():
        raise SpaceError(Problem("is a directory, expected a YAML file", file=name))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpaceError(Problem(f"cannot read: {exc.strerror or exc}", file=name)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise SpaceError(Problem(f"not UTF-8 text (byte {raw[exc.start]:#04x})", file=name, line=line)) from None
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise SpaceError(_yaml_problem(exc, name, text)) from None
    except RecursionError:
        raise SpaceError(Problem(f"nested more than {MAX_YAML_DEPTH} levels deep", file=name,
                                 line=_line_of_depth(text, MAX_YAML_DEPTH))) from None
    if node is None:
        raise SpaceError(Problem("the file is empty; a space starts with 'version: 1'", file=name))
    size, cycle = _node_stats(node)
    if cycle is not None:
        raise SpaceError(Problem("an alias refers to the node that contains it", file=name, line=cycle))
    if size > MAX_YAML_NODES:
        raise SpaceError(Problem(f"the document expands to more than {MAX_YAML_NODES:,} values (aliases)",
                                 file=name, line=node.start_mark.line + 1))
    complex_key = _complex_key_line(node)
    if complex_key is not None:
        raise SpaceError(Problem("a key must be a plain name, not a list or mapping", file=name, line=complex_key))
    if _depth(node) > MAX_YAML_DEPTH:
        raise SpaceError(Problem(f"nested more than {MAX_YAML_DEPTH} levels deep", file=name,
                                 line=_line_of_depth(text, MAX_YAML_DEPTH)))
    dups = list(_duplicate_keys(node))
    if dups:
        raise SpaceError([Problem("key given twice", ".".join(map(str, p)), name, line) for p, line in dups])
    try:
        data = yaml.load(text, Loader=_Loader)
    except Exception as exc:  # constructors raise ValueError, KeyError, TypeError, ... for bad tags and keys
        line = _bad_scalar_line(_Loader(text), node) or (getattr(getattr(exc, "problem_mark", None), "line", 0) + 1)
        what = getattr(exc, "problem", None) or f"{type(exc).__name__}: {exc}"
        raise SpaceError(Problem(f"cannot read this value: {str(what).splitlines()[0][:200]}", file=name,
                                 line=line)) from None
    return data, _line_map(node)


def _complex_key_line(node: yaml.Node) -> int | None:
    """The line of the first mapping key that is itself a list or a mapping (None if there is none)."""
    for n in _nodes(node):
        if isinstance(n, yaml.MappingNode):
            for k, _ in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    return k.start_mark.line + 1
    return None


def _depth(node: yaml.Node, limit: int = MAX_YAML_DEPTH + 1) -> int:
    """Nesting depth of a composed document (stops counting past ``limit``)."""
    best, stack, seen = 0, [(node, 1)], set()
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if best >= limit or id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.MappingNode):
            stack.extend((c, d + 1) for pair in n.value for c in pair)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((c, d + 1) for c in n.value)
    return best



def parse_overrides(overrides: Iterable[str]) -> list[tuple[str, Any, str]]:
    """``["train.epochs=1", ...]`` -> ``[(path, value, original text), ...]``; values are parsed as YAML."""
    out, problems = [], []
    for text in overrides:
        path, sep, raw = text.partition("=")
        path = path.strip()
        if not sep or not path or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", path):
            problems.append(Problem(f"expected dotted.path=VALUE, e.g. train.epochs=1 (got {text!r})", file="--set"))
            continue
        try:
            value = parse_yaml_value(raw)
        except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            problems.append(Problem(f"value is not valid YAML: {first}", path, "--set"))
            continue
        out.append((path, value, text))
    if problems:
        raise SpaceError(problems)
    return out

