"""Fuzzing the space validator, and what it accepts, with hypothesis.

- ``test_validate_never_crashes`` (1,000 examples): two valid bases (the tiny space of ``conftest.py`` and
  ``spaces/mobilenet.yaml``) with one to four fields mutated (wrong types, out-of-range and huge numbers, NaN and
  infinities, unknown / misspelt / unicode / non-string keys, bad ranges such as ``{low: 5, high: 1}`` or
  ``{low: 2, high: 32}`` for ``compress.bits``, choices with bad members, nested garbage, raw YAML that is hard to
  construct, documents that are not mappings, data too large for memory), plus zero to three ``--set`` overrides,
  through the CLI's error boundary (``autokd.cli.main(["validate", SPACE, "--set=..."])``). Each run exits 0 or 2,
  prints no traceback, and every stderr line is ``error: FILE:LINE: ...`` or ``error: --set ...: ...``. A space
  with exactly one mutation that is invalid by construction (and no override) must be refused. The memory limit is
  fixed at :data:`FUZZ_MEMORY_LIMIT` (``AUTOKD_MEMORY_LIMIT_BYTES``), so what is refused does not depend on the
  machine; some examples must be refused by the memory check.
- ``test_accepted_spaces_build_and_train`` (100 accepted examples): spaces that vary what users vary (model,
  train, compress and distill fields; digits at 8-32 px). Whatever ``validate`` accepts must run: one configuration
  is sampled, student and teacher are built, and the student trains one step, is pruned and quantized as the space
  asks, trains one fine-tune step and is measured, on two random images.
- Each property is run by a plain test that counts the examples it really ran (:data:`COUNTS`) and fails below
  those numbers (a smaller hypothesis profile, or rejections eating the budget, would otherwise go unnoticed).
- ``KNOWN_VALIDATE`` / ``KNOWN_RUN``: minimal examples the properties found, kept as regressions; ``bug(reason)``
  records what each one used to do (all are fixed). A new finding goes in as
  ``marks=pytest.mark.xfail(strict=True, reason=...)`` until it is fixed. The properties themselves are never
  skipped.

Failing examples are not stored (``database=None``: every run starts afresh, so a fixed bug cannot come back from a
stale database); a failure prints the example and a ``@reproduce_failure`` blob.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import io
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, assume, currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from autokd.space import BOUNDS, MEMORY_LIMIT_ENV, QUANT_BITS, Space, dimensions, load_space

REPO = Path(__file__).resolve().parents[2]
INF, NAN = math.inf, math.nan

from tests.conftest import TINY_SPACE  # noqa: E402  (a valid space that trains in seconds)

BASES: dict[str, dict[str, Any]] = {
    "tiny": TINY_SPACE,
    "mobilenet": yaml.safe_load((REPO / "spaces" / "mobilenet.yaml").read_text(encoding="utf-8")),
}

# No explain phase (it re-runs failing examples under coverage tracing: minutes with torch), and one bug per run
# (shrinking each distinct failure of the training property took minutes; the regression lists below name them all).
FUZZ_SETTINGS = dict(deadline=None, database=None, print_blob=True, report_multiple_bugs=False,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much, HealthCheck.large_base_example])


# --------------------------------------------------------------------------------------------
# The schema, read from the pydantic models (so new fields are fuzzed too)


def _schema(model: type[BaseModel] = Space, prefix: tuple = ()) -> tuple[dict, list]:
    """``({block path: its model}, [leaf paths])``; the root block is ``()``."""
    blocks: dict[tuple, type[BaseModel]] = {prefix: model}
    leaves: list[tuple] = []
    for name, field in model.model_fields.items():
        ann, path = field.annotation, prefix + (name,)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            sub_blocks, sub_leaves = _schema(ann, path)
            blocks.update(sub_blocks)
            leaves += sub_leaves
        else:
            leaves.append(path)
    return blocks, leaves


BLOCKS, LEAVES = _schema()
SUB_BLOCKS = [b for b in BLOCKS if b]
DIM_KEYS = ("choices", "low", "high", "step", "log")
NUMERIC = sorted({tuple(p.split(".")) for p in BOUNDS} | {("compress", "bits")})  # searched by ranges too
CATEGORICAL = [("distill", "kd"), ("model", "conv"), ("train", "optimizer"), ("train", "augment")]
SEARCHABLE = NUMERIC + CATEGORICAL


def _literals(annotation: Any) -> list[Any]:
    """Every value of the ``Literal[...]`` types inside an annotation (unions, Annotated, Optional)."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literals(arg)]


def _field(path: tuple) -> Any:
    return BLOCKS[path[:-1]].model_fields[path[-1]]


LITERALS = {path: _literals(_field(path).annotation) for path in LEAVES}
LIST_FIELDS = {path for path in LEAVES
               if list in map(typing.get_origin, (_field(path).annotation, *typing.get_args(_field(path).annotation)))}


def dotted(path: tuple) -> str:
    return ".".join(map(str, path))


# --------------------------------------------------------------------------------------------
# Values


ODD_STRINGS = ["", " ", "~", "null", "Null", "NULL", "yes", "no", "on", "off", "y", "n", "True", "FALSE", "1e3",
               "0x1f", "0o17", "0b101", "1_000", ".inf", "-.inf", ".nan", "1,5", "١٢", "٣", "½", "Ⅻ", "1 ", " 1",
               "3.0", "nan", "inf", "\n", "a\nb", "\r\n", "\t", "\x00", "\x1b[31mred", "\u2028", "\ufeff", "é",
               "日本語", "🙂", "Z̤͔ͧ̑̓", "a: b", "- x", "#x", "'", '"', "{", "[", "*a", "&a", "!!str",
               "%YAML", "---", "...", "digits", "cifar", "mobilenetv2", "resnet", "depthwise", "sgd", "flops",
               "x" * 300]
EDGE_NUMBERS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 31, 32, 33, 64, 1024, 1025, -1, -2, 0.0, -0.0, 0.25,
                0.5, 0.9, 0.99, 0.999999, 1.0, 1.5, 2.5, 7.999, 8.0, 8.000001, 1e-300, 5e-324, 1e300,
                1.7976931348623157e308, -1e308, INF, -INF, NAN, 2**31, 2**53 + 1, 2**63, 2**64, 10**100, -(10**100)]

texts = st.one_of(st.text(max_size=12), st.sampled_from(ODD_STRINGS))
numbers = st.one_of(st.integers(-3, 40), st.integers(), st.floats(), st.floats(-2, 40), st.sampled_from(EDGE_NUMBERS))
scalars = st.one_of(st.none(), st.booleans(), numbers, numbers, texts, st.binary(max_size=6), st.dates())
keys = st.one_of(texts, texts, st.integers(-3, 3), st.none(), st.booleans(), st.floats())
garbage = st.recursive(scalars, lambda children: st.one_of(st.lists(children, max_size=4),
                                                           st.dictionaries(keys, children, max_size=4)),
                       max_leaves=8)


def plausible(path: tuple) -> st.SearchStrategy:
    """Values that are close to right for the field at ``path``: its literals, numbers near its bounds, ..."""
    options: list[st.SearchStrategy] = [numbers, st.booleans(), texts]
    if LITERALS.get(path):
        options += [st.sampled_from(LITERALS[path])] * 3
    name = dotted(path)
    if name in BOUNDS:
        lo, hi, _, _ = BOUNDS[name]
        near = [lo, hi, lo + 1e-9, hi - 1e-9, lo - 1, hi + 1]
        options += [st.sampled_from([v for v in near if math.isfinite(v)] or [0]),
                    st.floats(lo if math.isfinite(lo) else -1e3, hi if math.isfinite(hi) else 1e3)] * 2
    if name == "compress.bits":
        options += [st.sampled_from(list(QUANT_BITS) + [0, 1, 9, 16, 31, 33, 64])] * 3
    return st.one_of(options)


def near_valid(path: tuple) -> st.SearchStrategy:
    """Values that are often valid for the field at ``path`` (so that accepted spaces are fuzzed too)."""
    name = dotted(path)
    if LITERALS.get(path):
        return st.sampled_from(LITERALS[path])
    if name == "compress.bits":
        return st.sampled_from(QUANT_BITS)
    if name == "model.kernel_size":
        return st.sampled_from([1, 3, 5, 7, 9, 11])
    if name in BOUNDS:
        lo, hi, lo_in, hi_in = BOUNDS[name]
        lo, hi = (lo if math.isfinite(lo) else -1e6), (hi if math.isfinite(hi) else 1e6)
        if isinstance(lo, int) and isinstance(hi, int):
            return st.integers(lo, hi)
        return st.floats(lo, hi, exclude_min=not lo_in, exclude_max=not hi_in)
    field = _field(path)
    args = [a for a in (typing.get_args(field.annotation) or (field.annotation,)) if a is not type(None)]
    options: list[st.SearchStrategy] = [st.just(field.default)] if isinstance(field.default, (int, float, str)) else []
    if type(None) in typing.get_args(field.annotation):
        options.append(st.none())
    lo = max([m.ge for m in field.metadata if hasattr(m, "ge")] + [m.gt for m in field.metadata if hasattr(m, "gt")]
             + [-1000])
    hi = min([m.le for m in field.metadata if hasattr(m, "le")] + [m.lt for m in field.metadata if hasattr(m, "lt")]
             + [1000])
    if bool in args:
        options.append(st.booleans())
    elif int in args:
        options.append(st.integers(math.ceil(lo), math.floor(hi)))
    elif float in args:
        options.append(st.floats(lo, hi, exclude_min=True, exclude_max=True))
    elif str in args:
        options.append(st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True))
    return st.one_of(options)


def values_for(path: tuple) -> st.SearchStrategy:
    return st.one_of(plausible(path), plausible(path), garbage)


# Raw YAML that safe_dump cannot write: odd tags, recursive aliases, complex keys, merge keys, huge literals,
# deep nesting, syntax errors. Put in place of a token after dumping.
RAW_SNIPPETS = ["!!float abc", "!!int abc", "!!int 0x", "!!bool maybe", "!!timestamp junk", "!!binary '***'",
                "!!python/object:os.system x", "!!python/name:os.system ''", "!!python/tuple [1, 2]",
                "!!set {a, b}", "!!omap [a: 1]", "!!pairs [a: 1]", "!!map [1]", "!!seq {a: 1}", "!!null x",
                "!!str 3", "!!float 1", "!<tag:example.com,2000:x> 1", "!local 1", "&a [*a]", "&m {k: *m}",
                "{[1, 2]: 3}", "{{a: 1}: 2}", "{<<: [1]}", "{<<: 1}", "{a: 1, <<: {b: 2}}", "*undefined",
                "0x1F", "0o17", "0b11", "1_000", "+.inf", ".NaN", "1e999", "-1e999", "1e-999",
                "2001-12-14t21:59:43.1-05:00", "2001-01-01", "~", "=", "<<", "[1, 2", "{a: 1", "\"unterminated",
                "'it''s'", "@x", "`x", "%x",
                "a: b: c", "a\x00b", "\x07", "\x1b[31mred", "\"\\xZZ\"", "\"\\uD800\"", "[a, b]: c"]
raw_snippets = st.one_of(
    st.sampled_from(RAW_SNIPPETS),
    st.integers(4301, 5000).map(lambda n: "9" * n),  # past Python's int-from-string limit (4300 digits)
    st.integers(1, 1200).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 1200).map(lambda d: "{a: " * d + "1" + "}" * d),
)
RAW_TOKEN = "RAWSNIPPET{}XQ"


# --------------------------------------------------------------------------------------------
# Mutations: each edits the data in place and returns why the result must be refused (None: it may be valid)


def _get(data: Any, path: tuple) -> Any:
    for k in path:
        if not isinstance(data, dict) or k not in data:
            return None
        data = data[k]
    return data


def _put(data: dict, path: tuple, value: Any) -> None:
    for k in path[:-1]:
        if not isinstance(data.get(k), dict):
            data[k] = {}
        data = data[k]
    data[path[-1]] = value


def _existing_paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append(prefix + (k,))
            out += _existing_paths(v, prefix + (k,))
    return out


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def op_value(draw, data, raws):
    path = draw(st.sampled_from(LEAVES))
    value = draw(values_for(path))
    _put(data, path, value)
    if path not in SEARCHABLE and isinstance(value, dict):
        return f"{dotted(path)}: a mapping on a field that takes one value"
    if path not in SEARCHABLE and isinstance(value, list) and path not in LIST_FIELDS:
        return f"{dotted(path)}: a list on a field that takes one value"
    return None


def op_near_valid(draw, data, raws):
    path = draw(st.sampled_from(LEAVES))
    form = draw(st.sampled_from(["fixed", "choices", "range"])) if path in SEARCHABLE else "fixed"
    if form == "choices":
        value = {"choices": draw(st.lists(near_valid(path), min_size=1, max_size=4, unique_by=repr))}
    elif form == "range" and path in NUMERIC:
        low, high = sorted([draw(near_valid(path)), draw(near_valid(path))])
        value = {"low": low, "high": high}
    else:
        value = draw(near_valid(path))
    _put(data, path, value)
    return None


def op_range(draw, data, raws):
    path = draw(st.one_of(st.sampled_from(NUMERIC), st.sampled_from(NUMERIC), st.sampled_from(SEARCHABLE),
                          st.sampled_from(LEAVES)))
    bound = st.one_of(plausible(path), numbers)
    dim: dict[Any, Any] = {"low": draw(bound), "high": draw(bound)}
    if draw(st.integers(0, 3)) == 0:
        dim["step"] = draw(st.one_of(bound, garbage, st.sampled_from([5e-324, 1e-300, 1e-9, NAN, INF, 0, -1, 1e300])))
    if draw(st.integers(0, 3)) == 0:
        dim["log"] = draw(st.one_of(st.booleans(), garbage))
    if draw(st.integers(0, 9)) == 0:
        del dim[draw(st.sampled_from(["low", "high"]))]
    _put(data, path, dim)
    low, high = dim.get("low"), dim.get("high")
    if path not in SEARCHABLE:
        return f"{dotted(path)}: a range on a field that takes one value"
    if path in CATEGORICAL:
        return f"{dotted(path)}: a range on a categorical field"
    if "low" not in dim or "high" not in dim:
        return f"{dotted(path)}: a range without low or high"
    if _real(low) and _real(high) and not low < high:
        return f"{dotted(path)}: low={low} is not below high={high}"
    plain = "step" not in dim and "log" not in dim and _int(low) and _int(high) and low < high
    if plain and path == ("compress", "bits") and any(v not in QUANT_BITS for v in range(low, high + 1)):
        return f"compress.bits: the range {low}..{high} holds unsupported bit widths"
    if plain and path == ("model", "kernel_size"):
        return f"model.kernel_size: the range {low}..{high} holds even sizes"
    return None


def op_choices(draw, data, raws):
    path = draw(st.one_of(st.sampled_from(SEARCHABLE), st.sampled_from(SEARCHABLE), st.sampled_from(LEAVES)))
    members = draw(st.lists(st.one_of(plausible(path), plausible(path), garbage), max_size=6))
    _put(data, path, {"choices": members})
    if path not in SEARCHABLE:
        return f"{dotted(path)}: choices on a field that takes one value"
    if not members:
        return f"{dotted(path)}: empty choices"
    if len({repr(m) for m in members}) != len(members):
        return f"{dotted(path)}: repeated choices"
    if path == ("compress", "bits") and any(_int(m) and m not in QUANT_BITS for m in members):
        return "compress.bits: an unsupported bit width among the choices"
    if path == ("model", "kernel_size") and any(_int(m) and m % 2 == 0 for m in members):
        return "model.kernel_size: an even size among the choices"
    return None


def op_unknown_key(draw, data, raws):
    dims = [p for p in _existing_paths(data) if isinstance(_get(data, p), dict) and p not in BLOCKS]
    where = draw(st.one_of(st.sampled_from(list(BLOCKS)), st.sampled_from(dims or [()])))
    key = draw(keys)
    value = draw(st.one_of(scalars, garbage))
    if where and not isinstance(_get(data, where), dict):
        _put(data, where, {})
    target = _get(data, where) if where else data
    target[key] = value
    valid = set(BLOCKS[where].model_fields) if where in BLOCKS else set(DIM_KEYS)
    if isinstance(key, str) and key in valid:
        return None
    return f"{dotted(where) or '<top>'}: unknown key {key!r}"


def op_delete(draw, data, raws):
    paths = _existing_paths(data)
    if not paths:
        return None
    path = draw(st.sampled_from(paths))
    parent = _get(data, path[:-1]) if path[:-1] else data
    del parent[path[-1]]
    if path in (("version",), ("name",)):
        return f"{dotted(path)}: a required field is deleted"
    return None


def _typo(draw, word: str) -> str:
    kind = draw(st.sampled_from(["drop", "double", "swap", "upper", "accent", "space", "dash"]))
    i = draw(st.integers(0, max(0, len(word) - 1)))
    if kind == "drop" and len(word) > 1:
        return word[:i] + word[i + 1:]
    if kind == "double":
        return word[:i] + word[i:i + 1] * 2 + word[i + 1:]
    if kind == "swap" and len(word) > 1:
        j = min(i + 1, len(word) - 1)
        return word[:min(i, j - 1)] + word[j] + word[min(i, j - 1)] + word[j + 1:]
    if kind == "upper":
        return word.upper()
    if kind == "accent":
        return word[:i] + "é" + word[i + 1:]
    if kind == "space":
        return word + " "
    return word.replace("_", "-") if "_" in word else word + "_"


def op_typo(draw, data, raws):
    paths = [p for p in _existing_paths(data) if isinstance(p[-1], str) and p[-1]]
    if not paths:
        return None
    path = draw(st.sampled_from(paths))
    parent = _get(data, path[:-1]) if path[:-1] else data
    new = _typo(draw, path[-1])
    if new == path[-1]:
        return None
    parent[new] = parent.pop(path[-1])
    valid = set(BLOCKS[path[:-1]].model_fields) if path[:-1] in BLOCKS else set(DIM_KEYS)
    return None if new in valid else f"{dotted(path)}: misspelt as {new!r}"


def op_raw(draw, data, raws):
    dims = [p + ("choices",) for p in _existing_paths(data)
            if isinstance(_get(data, p), dict) and "choices" in _get(data, p)]
    path = draw(st.one_of(st.sampled_from(LEAVES), st.sampled_from(SUB_BLOCKS),
                          st.sampled_from(dims or LEAVES)))
    raws.append(draw(raw_snippets))
    _put(data, path, RAW_TOKEN.format(len(raws) - 1))
    return None


def op_block(draw, data, raws):
    path = draw(st.sampled_from(SUB_BLOCKS))
    value = draw(st.one_of(scalars, st.lists(garbage, max_size=3), st.just({})))
    _put(data, path, value)
    return None if isinstance(value, dict) else f"{dotted(path)}: a block that is not a mapping"


FUZZ_MEMORY_LIMIT = 2 * 10**9  # bytes the data may use in this module (AUTOKD_MEMORY_LIMIT_BYTES)
# (images in all splits, channels, native side) of the datasets known without their files
DATASET_SIZES = {"digits": (1797, 1, 8), "mnist": (70000, 1, 28), "fashion_mnist": (70000, 1, 28),
                 "cifar10": (60000, 3, 32), "cifar100": (60000, 3, 32)}


def op_memory(draw, data, raws):
    """Data that may not fit in memory: a large dataset, a large image size, many augmented views, no limit."""
    name = draw(st.sampled_from(sorted(DATASET_SIZES)))
    size = draw(st.one_of(st.none(), st.integers(4, 1024), st.sampled_from([64, 128, 256, 512, 1024])))
    limit = draw(st.one_of(st.none(), st.none(), st.integers(10, 100_000)))
    for key, value in (("name", name), ("image_size", size), ("limit", limit)):
        _put(data, ("dataset", key), value)
    if draw(st.booleans()):
        _put(data, ("train", "augment"), draw(st.sampled_from([True, {"choices": [True, False]}])))
        _put(data, ("train", "augment_views"), draw(st.integers(1, 64)))
    n, channels, native = DATASET_SIZES[name]
    side = size or native
    if limit is None and n * channels * side * side * 4 > FUZZ_MEMORY_LIMIT:  # the float32 images alone
        return f"dataset: {n:,} images of {channels}×{side}×{side} float32 exceed {FUZZ_MEMORY_LIMIT:,} bytes"
    return None


OPS = [op_near_valid, op_near_valid, op_near_valid, op_value, op_value, op_value, op_range, op_range, op_choices,
       op_choices, op_unknown_key, op_delete,
       op_typo, op_raw, op_block, op_memory, op_memory]

# Whole documents that are not a space mapping (data, or raw text).
NON_MAPPING_TEXTS = ["---\n", "--- 1\n--- 2\n", "# a comment only\n", "- version: 1\n  name: x\n",
                     "%YAML 1.2\n---\n[]\n", "%FOO bar\n---\nversion: 1\n", "\ufeff- 1\n", "...\n", "'version: 1'\n",
                     "version: 1\nname: x\n--- \nversion: 1\n", "!!set {version, name}\n", "*a\n", "&a [*a]\n",
                     "[version: 1]\n", "? version\n: 1\n? [a]\n: 2\n", "\"\\\n"]


@dataclass
class Case:
    text: str = dataclasses.field(repr=False)  # shown by note() as written
    sets: list[str]
    must_fail: str | None  # why the space must be refused (only where that is certain), else None


def _dump(data: Any, draw) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=draw(st.booleans()),
                          default_flow_style=draw(st.sampled_from([False, False, None])))


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=2**31, allow_unicode=True)
    return text.removesuffix("...\n").rstrip("\n")


@st.composite
def set_texts(draw) -> str:
    """One ``--set`` argument: PATH=VALUE with a known or invented path and a value near right, garbage, raw YAML
    or plain text; sometimes no ``=`` at all."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(texts)
    leaf = draw(st.sampled_from(LEAVES))
    path = draw(st.one_of(st.just(dotted(leaf)), st.just(dotted(leaf)),
                          st.sampled_from([dotted(b) for b in BLOCKS if b]),
                          st.sampled_from([dotted(leaf + (k,)) for k in DIM_KEYS]),
                          st.from_regex(r"[A-Za-z_]\w{0,6}(\.[A-Za-z_]\w{0,6}){0,3}", fullmatch=True),
                          texts))
    value = draw(st.one_of(near_valid(leaf).map(_flow), near_valid(leaf).map(_flow), values_for(leaf).map(_flow),
                           raw_snippets, texts))
    return f"{path}={value}"


@st.composite
def fuzz_cases(draw) -> Case:
    n_sets = max(0, draw(st.integers(-5, 3)))  # no override in about half of the cases
    sets = [draw(set_texts()) for _ in range(n_sets)]
    if draw(st.integers(0, 24)) == 0:  # a document that is not a mapping
        if draw(st.booleans()):
            return Case(draw(st.sampled_from(NON_MAPPING_TEXTS)), sets, None)
        doc = draw(st.one_of(st.lists(garbage, max_size=4), scalars))
        return Case(_dump(doc, draw), sets, None if sets else "the document is not a mapping")
    data = copy.deepcopy(BASES[draw(st.sampled_from(["tiny", "mobilenet"]))])
    raws: list[str] = []
    ops = [draw(st.sampled_from(OPS)) for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3, 4])))]
    reasons = [op(draw, data, raws) for op in ops]
    text = _dump(data, draw)
    for i, snippet in enumerate(raws):
        text = text.replace(RAW_TOKEN.format(i), snippet)
    must_fail = reasons[0] if len(ops) == 1 and not sets and not raws else None
    return Case(text, sets, must_fail)


# --------------------------------------------------------------------------------------------
# Running validate through the error boundary


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_validate(path: Path, sets: list[str]) -> Result:
    from autokd.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate", str(path), *[f"--set={s}" for s in sets]])
    return Result(code, _ANSI.sub("", out.getvalue()), _ANSI.sub("", err.getvalue()))


def unlocated_lines(res: Result, path: Path, n_lines: int) -> list[str]:
    """stderr lines (split at newlines, as a terminal shows them) that are not ``error: FILE:LINE: ...`` with a line
    of the file, or ``error: --set ...: ...``. ``error: FILE: ...`` without a line is accepted for an empty file
    only (tests/cli/test_errors.py::test_empty_file)."""
    bad = []
    located = re.compile(re.escape(f"error: {path}:") + r"(\d+): ")
    for line in res.err.split("\n"):
        if not line.strip():
            continue
        m = located.match(line)
        if m and 1 <= int(m.group(1)) <= n_lines + 1:
            continue
        if line.startswith("error: --set: ") or re.match(r"error: --set .*?: ", line):
            continue
        if line.startswith(f"error: {path}: ") and "empty" in line:
            continue
        bad.append(line)
    return bad


@pytest.fixture(scope="module")
def cli_env():
    """What the ``cli`` fixture sets, for a whole module (hypothesis and function-scoped fixtures don't mix)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLUMNS", "1000")
        mp.setenv("NO_COLOR", "1")
        mp.delenv("FORCE_COLOR", raising=False)
        mp.delenv("AUTOKD_DEBUG", raising=False)
        mp.setenv(MEMORY_LIMIT_ENV, str(FUZZ_MEMORY_LIMIT))  # the same refusals on every machine
        yield


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory, cli_env) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_INTERNAL: dict[str, type[AssertionError]] = {}


def _internal_error(message: str) -> type[AssertionError]:
    """One AssertionError subclass per internal exception type: the failure's headline names the crash (and with
    ``report_multiple_bugs`` on, hypothesis tells the kinds apart, as it does by exception type and line)."""
    m = re.search(r"internal error: (\w+)", message)
    name = m.group(1) if m else "Unknown"
    if name not in _INTERNAL:
        _INTERNAL[name] = type(f"InternalError_{name}", (AssertionError,), {})
    return _INTERNAL[name]


def check_validate(path: Path, text: str, sets: list[str], must_fail: str | None = None) -> Result:
    """Write ``text`` to ``path``, run ``autokd validate`` on it with ``sets`` and check the contract."""
    path.write_text(text, encoding="utf-8")
    res = run_validate(path, sets)
    if currently_in_test_context():
        note(f"exit {res.code}\nstderr:\n{res.err}")
        event(f"exit {res.code}")
        if res.code == 2 and "the data would need" in res.err:
            event("refused: the data would not fit in memory")
            COUNTS["memory refusals"] += 1
    assert "Traceback" not in res.out + res.err, res.out + res.err
    if res.code == 1:
        raise _internal_error(res.err)(f"exit 1 (internal error) instead of 0 or 2:\n{res.err}")
    assert res.code in (0, 2), (res.code, res.err)
    if res.code == 0:
        assert not res.err.strip(), f"exit 0 with stderr:\n{res.err}"
        assert "valid" in res.out, res.out
        assert must_fail is None, f"accepted a space that must be refused ({must_fail})"
    else:
        assert res.err.strip(), "exit 2 without an error line"
        bad = unlocated_lines(res, path, text.count("\n") + 1)
        assert not bad, "unlocated stderr lines:\n" + "\n".join(map(repr, bad)) + f"\nin:\n{res.err}"
    return res


#: Examples the properties really ran in this session (reset by each property's test).
COUNTS: collections.Counter = collections.Counter()
VALIDATE_EXAMPLES, TRAIN_EXAMPLES = 1000, 100  # what the issue asks for: >= 1,000 and >= 100


@settings(max_examples=VALIDATE_EXAMPLES, **FUZZ_SETTINGS)
@given(case=fuzz_cases())
def validate_never_crashes(fuzz_dir, case):
    note(f"--- space ---\n{case.text}--- sets: {case.sets!r}\n--- must fail: {case.must_fail}")
    check_validate(fuzz_dir / "space.yaml", case.text, case.sets, case.must_fail)
    COUNTS["validated"] += 1


def test_validate_never_crashes(fuzz_dir):
    COUNTS.clear()
    validate_never_crashes(fuzz_dir)
    assert COUNTS["validated"] >= VALIDATE_EXAMPLES, COUNTS
    assert COUNTS["memory refusals"] >= 5, COUNTS  # the memory check is fuzzed too (op_memory: ~30 a run)


# --------------------------------------------------------------------------------------------
# What validate accepts must run


def _floats(lo: float, hi: float, edges: list[float]) -> st.SearchStrategy:
    return st.one_of(st.sampled_from(edges), st.floats(lo, hi))


# dotted path -> (strategy of one value, searchable, numeric kind: "float" | "int" | None)
RUN_FIELDS: dict[str, tuple[st.SearchStrategy, bool, str | None]] = {
    "model.family": (st.sampled_from(["mobilenetv2", "mobilenetv2", "resnet"]), False, None),
    "model.width_mult": (_floats(0.01, 2.0, [1.0, 1e-6, 0.01, 0.1, 0.25, 0.35, 0.5, 0.75, 1.4, 2.0]), True, "float"),
    "model.depth_mult": (_floats(0.01, 2.0, [1.0, 1e-6, 0.1, 0.34, 0.5, 1.5, 2.0]), True, "float"),
    "model.kernel_size": (st.sampled_from([3, 1, 5, 7, 9, 11]), True, "odd"),
    "model.expand_ratio": (st.integers(1, 12).map(lambda v: 6 if v == 1 else 1 if v == 6 else v), True, "int"),
    "model.conv": (st.sampled_from(["depthwise", "standard"]), True, None),
    "model.dropout": (_floats(0.0, 0.999, [0.0, 0.1, 0.5, 0.9, 0.999]), True, "float"),
    "model.stages": (st.sampled_from(["small", "cifar"]), False, None),
    "compress.bits": (st.sampled_from(sorted(QUANT_BITS, reverse=True)), True, "bits"),
    "compress.prune_ratio": (_floats(0.0, 0.999, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]), True, "float"),
    "compress.prune_method": (st.sampled_from(["l1", "l2", "random", "taylor", "bn_scale"]), False, None),
    "compress.round_to": (st.sampled_from([1, 1, 2, 4, 8, 16]), False, None),
    "compress.act_bits": (st.sampled_from([None, 2, 3, 4, 8]), False, None),
    "compress.keep_first_last": (st.booleans(), False, None),
    "train.label_smoothing": (_floats(0.0, 0.999, [0.0, 0.1, 0.5, 0.9, 0.999]), True, "float"),
    "train.batch_size": (st.sampled_from([64, 2, 3, 16, 1024]), False, None),
    "train.lr": (_floats(1e-6, 1.0, [0.05, 1e-6, 1e-3, 0.5, 1.0, 10.0, 1e39]), True, "float"),
    "train.optimizer": (st.sampled_from(["sgd", "adamw"]), True, None),
    "train.momentum": (st.sampled_from([0.9, 0.0, 0.5, 0.99]), False, None),
    "train.weight_decay": (st.sampled_from([5e-4, 0.0, 0.1, 1e39]), True, "float"),
    "train.schedule": (st.sampled_from(["cosine", "onecycle"]), False, None),
    "distill.kd": (st.booleans(), True, None),
    "distill.temperature": (_floats(0.01, 100.0, [4.0, 1e-300, 1e-3, 0.5, 1.0, 20.0, 1e3, 1e200]), True, "float"),
    "distill.alpha": (_floats(0.0, 1.0, [0.9, 0.0, 0.5, 1.0]), True, "float"),
}


@st.composite
def searched(draw, path: str) -> Any:
    """A fixed value, ``{choices: [...]}`` or ``{low:, high:, step:?, log:?}`` for one field of RUN_FIELDS."""
    values, searchable, kind = RUN_FIELDS[path]
    form = draw(st.sampled_from(["fixed", "choices", "range"])) if searchable else "fixed"
    if form == "choices":
        return {"choices": draw(st.lists(values, min_size=1, max_size=3, unique_by=repr))}
    if form == "range" and kind == "float":
        low, high = sorted([draw(values), draw(values)])
        if not low < high:
            return low
        shape = draw(st.sampled_from(["plain", "step", "log"]))
        if shape == "step":
            return {"low": low, "high": high, "step": (high - low) / draw(st.integers(1, 4))}
        if shape == "log" and low > 0:
            return {"low": low, "high": high, "log": True}
        return {"low": low, "high": high}
    if form == "range" and kind == "int":
        low, high = sorted([draw(values), draw(values)])
        return {"low": low, "high": high} if low < high else low
    if form == "range" and kind == "odd":
        low, high = sorted([draw(values), draw(values)])
        return {"low": low, "high": high, "step": 2} if low < high else low
    if form == "range" and kind == "bits":
        low, high = sorted(draw(st.lists(st.integers(2, 8), min_size=2, max_size=2, unique=True)))
        return {"low": low, "high": high}
    return draw(values)


@st.composite
def trainable_spaces(draw) -> dict[str, Any]:
    space: dict[str, Any] = {
        "version": 1, "name": "fuzz-run",
        "dataset": {"name": "digits", "image_size": draw(st.integers(8, 32))},
        "model": {}, "distill": {"teacher": {"family": "resnet", "width": 8, "epochs": 1}},
        "train": {"epochs": 1}, "compress": {"finetune_epochs": 1}, "search": {"n_trials": 2},
    }
    for path in RUN_FIELDS:
        if path == "model.family" or draw(st.integers(0, 2)) == 2:  # shrinks towards leaving the field out
            block, name = path.split(".")
            space[block][name] = draw(searched(path))
    return space


def _param(draw, dim) -> Any:
    """One value of a searched dimension, as an Optuna trial could propose it."""
    if dim.choices is not None:
        return draw(st.sampled_from(dim.choices))
    if dim.step:
        k = draw(st.integers(0, int(math.floor((dim.high - dim.low) / dim.step + 1e-9))))
        value = dim.low + k * dim.step
        return int(value) if dim.is_int else min(float(value), dim.high)  # (Optuna may drop a rounded-off high)
    if dim.is_int:
        return draw(st.integers(int(dim.low), int(dim.high)))
    return draw(st.floats(dim.low, dim.high))


MAX_PARAMS, MAX_FLOPS = 1_500_000, 150_000_000  # keep one example well under a second on a shared CPU


def train_one_config(cfg: Any, images: torch.Tensor, labels: torch.Tensor) -> None:
    """What a trial does, on two images: build student and teacher, one training step (forward, backward, step),
    prune, quantize, one fine-tune step, evaluate, measure. Raises whatever the pipeline raises."""
    from autokd.compress import prune_model, quantize_model
    from autokd.measure import cost_metrics
    from autokd.models import build_student, build_teacher
    from autokd.train import Distillation, Optim, fit

    student = build_student(cfg.model, num_classes=10, in_channels=1)
    teacher = build_teacher(cfg.distill.teacher, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        teacher_logits = teacher(images)
    distill = Distillation(teacher_logits, cfg.distill.temperature, cfg.distill.alpha) if cfg.distill.kd else None
    fit(student, images, labels, Optim.from_train(cfg.train, epochs=1), seed=0, distill=distill)
    c = cfg.compress
    if c.prune_ratio > 0:
        student = prune_model(student, ratio=c.prune_ratio, method=c.prune_method, example_input=images[:1],
                              round_to=c.round_to, calibration=(images, labels))
    if c.bits != 32:
        student = quantize_model(student, bits=c.bits, act_bits=c.act_bits, keep_first_last=c.keep_first_last)
    lr = c.finetune_lr if c.finetune_lr is not None else cfg.train.lr / 2
    fit(student, images, labels, Optim.from_train(cfg.train, epochs=1, lr=lr), seed=1, distill=distill)
    student.eval()
    with torch.no_grad():
        out = student(images)
    assert out.shape == (2, 10), out.shape
    assert torch.isfinite(out).all(), f"non-finite logits after one step:\n{out}"
    cost_metrics(student, tuple(images.shape[1:]))


def _too_big(cfg: Any, size: int) -> bool:
    from autokd.measure import count_params, flops
    from autokd.models import build_student

    with torch.device("meta"):
        model = build_student(cfg.model, num_classes=10, in_channels=1)
    return count_params(model) > MAX_PARAMS or flops(model, (1, size, size)) > MAX_FLOPS


DIVERGING_LR = 10.0  # from here one SGD step may diverge: fit's "training diverged" is then a trial failure


def run_accepted(cfg: Any, seed: int = 0) -> None:
    """Train ``cfg`` on two random images of its size; a divergence is tolerated at a learning rate of
    DIVERGING_LR or more only (fit reports it as a failed trial, not as a crash)."""
    size = cfg.dataset.image_size or 8
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 1, size, size, generator=gen)
    labels = torch.randint(0, 10, (2,), generator=gen)
    torch.manual_seed(0)
    try:
        train_one_config(cfg, images, labels)
    except FloatingPointError as exc:
        lr = max(cfg.train.lr, cfg.compress.finetune_lr or 0.0)
        if "diverged" not in str(exc) or lr < DIVERGING_LR:
            raise
        if currently_in_test_context():
            event("diverged at a learning rate >= 10 (a failed trial, not a crash)")


@settings(max_examples=TRAIN_EXAMPLES, **FUZZ_SETTINGS)
@given(space=trainable_spaces(), data=st.data())
def accepted_spaces_build_and_train(fuzz_dir, space, data):
    from autokd.sampling import sample

    text = yaml.safe_dump(space, sort_keys=False)
    note(f"--- space ---\n{text}")
    path = fuzz_dir / "run.yaml"
    res = check_validate(path, text, [])
    assume(res.code == 0)  # refusals are the first property's business; count accepted spaces only
    sp = load_space(path)
    params = {d.path: _param(data.draw, d) for d in dimensions(sp)}
    note(f"params: {params}")
    cfg = sample(sp, optuna.trial.FixedTrial(params))
    if _too_big(cfg, cfg.dataset.image_size or 8):
        event("skipped: model over the CPU budget")
        assume(False)
    run_accepted(cfg, seed=data.draw(st.integers(0, 2**16)))
    COUNTS["trained"] += 1


@pytest.mark.filterwarnings("ignore::UserWarning:optuna")  # a float step that does not divide high - low exactly
def test_accepted_spaces_build_and_train(fuzz_dir):
    COUNTS.clear()
    accepted_spaces_build_and_train(fuzz_dir)
    assert COUNTS["trained"] >= TRAIN_EXAMPLES, COUNTS


# --------------------------------------------------------------------------------------------
# Regressions: minimal examples found by the properties


def _tiny_with(**fields: Any) -> str:
    """The tiny space with dotted fields set (``model__width_mult=...`` style keys)."""
    data = copy.deepcopy(TINY_SPACE)
    for key, value in fields.items():
        _put(data, tuple(key.split("__")), value)
    return yaml.safe_dump(data, sort_keys=False)


TINY_TEXT = yaml.safe_dump(TINY_SPACE, sort_keys=False)
UNCAUGHT_YAML = ("yaml.load in autokd.space._read_yaml runs outside the try that turns YAMLError into a located "
                 "SpaceError, and the constructors also raise ValueError/KeyError/AttributeError")


def bug(reason: str) -> tuple:
    """A regression: the bug ``reason`` describes was found by the properties and fixed; the case keeps it fixed."""
    return ()


KNOWN_VALIDATE = [
    # Refused as they should be (kept so that they stay refused, located).
    pytest.param(_tiny_with(compress__bits={"low": 2, "high": 32}), [], "bits range 2..32", id="bits-range-2-32"),
    pytest.param(_tiny_with(compress__bits={"low": 5, "high": 1}), [], "bits range 5..1", id="bits-range-5-1"),
    pytest.param(_tiny_with(model__kernel_size={"low": 3, "high": 7}), [], "even kernel sizes", id="kernel-range"),
    pytest.param(TINY_TEXT, ["model.width_mult={low: .nan, high: 1}"], "NaN low", id="set-nan-low"),
    pytest.param(TINY_TEXT, ["train.epochs=1e400"], "infinite epochs", id="set-epochs-inf"),
    pytest.param(TINY_TEXT, ["train.lr=!!python/object:os.system x"], "unsafe tag", id="set-python-tag"),
    pytest.param("- 1\n- 2\n", [], "not a mapping", id="list-document"),
    pytest.param(_tiny_with(dataset={"name": "cifar10", "image_size": 1024}), [], "2.8 TB of images",
                 id="memory-cifar10-1024"),
    pytest.param(TINY_TEXT, ["dataset.image_size=1024"], "7.5 GB of digits", id="memory-set-digits-1024"),
    # Found by test_validate_never_crashes, fixed; each reason says what the bug was.
    pytest.param(TINY_TEXT + "[1, 2]: 3\n", [], "complex key", id="complex-key",
                 marks=bug("exit 1: TypeError: unhashable type: 'list' (a YAML key that is a sequence)")),
    pytest.param(TINY_TEXT + "? {a: 1}\n: 3\n", [], "complex key", id="mapping-key",
                 marks=bug("exit 1: TypeError: unhashable type (a YAML key that is a mapping)")),
    pytest.param(TINY_TEXT + "x: " + "[" * 1000 + "]" * 1000 + "\n", [], "unknown key", id="deep-nesting",
                 marks=bug("exit 1: RecursionError (1,000 nested flow sequences; from ~450 levels at the CLI)")),
    pytest.param(TINY_TEXT + "x: &a [*a]\n", [], "unknown key", id="recursive-alias",
                 marks=bug("exit 1: RecursionError: _line_map/_duplicate_keys follow a self-referencing alias")),
    pytest.param("&a [*a]\n", [], None, id="recursive-alias-document",
                 marks=bug("exit 1: RecursionError on a self-referencing document")),
    pytest.param(_tiny_with(train__lr="TAG").replace("TAG", "!!float abc"), [], None, id="tag-float-abc",
                 marks=bug("exit 1: ValueError: could not convert string to float: 'abc'; " + UNCAUGHT_YAML)),
    pytest.param(_tiny_with(train__epochs="TAG").replace("TAG", "!!int abc"), [], None, id="tag-int-abc",
                 marks=bug("exit 1: ValueError: invalid literal for int(); " + UNCAUGHT_YAML)),
    pytest.param(_tiny_with(distill__kd="TAG").replace("TAG", "!!bool maybe"), [], None, id="tag-bool-maybe",
                 marks=bug("exit 1: KeyError: 'maybe'; " + UNCAUGHT_YAML)),
    pytest.param(_tiny_with(name="TAG").replace("TAG", "!!timestamp junk"), [], None, id="tag-timestamp-junk",
                 marks=bug("exit 1: AttributeError: 'NoneType' object has no attribute 'groupdict'; "
                           + UNCAUGHT_YAML)),
    pytest.param(_tiny_with(train__lr="TAG").replace("TAG", "!!python/object:os.system x"), [], None,
                 id="tag-python-object",
                 marks=bug("exit 1: ConstructorError: could not determine a constructor (a 4-line message); "
                           + UNCAUGHT_YAML)),
    pytest.param(_tiny_with(train__lr="TAG").replace("TAG", "!!map [1]"), [], None, id="tag-map-on-sequence",
                 marks=bug("exit 1: ConstructorError: expected a mapping node, but found sequence; "
                           + UNCAUGHT_YAML)),
    pytest.param(_tiny_with(train__lr="TAG").replace("TAG", "{<<: [1]}"), [], None, id="bad-merge-key",
                 marks=bug("exit 1: ConstructorError: expected a mapping for merging; " + UNCAUGHT_YAML)),
    pytest.param(_tiny_with(train__seed="TAG").replace("TAG", "9" * 4301), [], None, id="huge-int-file",
                 marks=bug("exit 1: ValueError: Exceeds the limit (4300 digits) for integer string conversion")),
    pytest.param(TINY_TEXT, ["train.seed=" + "9" * 4301], None, id="huge-int-set",
                 marks=bug("exit 1: ValueError: Exceeds the limit (4300 digits) (parse_yaml_value catches "
                           "YAMLError only)")),
    pytest.param(TINY_TEXT, ["model.dropout={low: 0.0, high: 0.5, step: .nan}"], "NaN step", id="nan-step",
                 marks=bug("exit 1: ValueError: cannot convert float NaN to integer (check_ranges lets a NaN step "
                           "through: NaN <= 0 and NaN > high - low are false; Dimension.size then calls int())")),
    pytest.param(TINY_TEXT, ["model.width_mult={low: 0.1, high: 1.0, step: 5.0e-324}"], None, id="tiny-step",
                 marks=bug("exit 1: OverflowError: cannot convert float infinity to integer (Dimension.size of a "
                           "float range whose (high - low) / step overflows)")),
    pytest.param(_tiny_with(model={**TINY_SPACE["model"], "a\nb": 1}), [], "unknown key", id="newline-in-key",
                 marks=bug("unlocated line: the key is printed raw, so 'model.a' and 'b: unknown field ...' are "
                           "two lines and the second is not 'error: FILE:LINE: ...'")),
    pytest.param(TINY_TEXT, ["train.lr=[0.1,\n 0.2]"], None, id="newline-in-set",
                 marks=bug("unlocated line: the --set text is printed raw; its newline breaks the error line")),
    pytest.param(TINY_TEXT + "x: a\x00b\n", [], "NUL", id="control-character",
                 marks=bug("'error: FILE: YAML syntax error: unacceptable character #x0000' has no line (yaml's "
                           "ReaderError has no problem_mark; it has .position)")),
]


@pytest.mark.parametrize("text,sets,must_fail", KNOWN_VALIDATE)
def test_known_validate_cases(fuzz_dir, text, sets, must_fail):
    check_validate(fuzz_dir / "known.yaml", text, sets, must_fail)


def test_not_utf8_is_located(fuzz_dir):
    """A byte that is not UTF-8: the position is known, so the line is too (judgement: a whole-file read error,
    but the contract asks for a line)."""
    path = fuzz_dir / "latin1.yaml"
    path.write_bytes(TINY_TEXT.encode() + "x: caf\xe9\n".encode("latin-1"))
    res = run_validate(path, [])
    assert res.code == 2 and "Traceback" not in res.err
    assert not unlocated_lines(res, path, TINY_TEXT.count("\n") + 2), res.err


def test_alias_bomb_is_answered_quickly(fuzz_dir):
    """A "billion laughs" document: a located error, fast (10^6 expansions of 10 aliases per level)."""
    import time

    text = TINY_TEXT + "x:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for prev, name in zip("abcde", "bcdef"):
        text += f"  {name}: &{name} [{', '.join(['*' + prev] * 10)}]\n"
    # CPU time of this process, not wall time: the suite runs in parallel processes on 2 cores, and another
    # process's work must not fail this test (an expanded bomb costs seconds of CPU, far past the limit)
    start = time.process_time()
    check_validate(fuzz_dir / "bomb.yaml", text, [], "unknown key x")
    assert time.process_time() - start < 0.5


# What validate accepts must run: (fields set on a tiny KD space, case id, the bug it used to show).
RUN_BASE: dict[str, Any] = {
    "version": 1, "name": "known-run", "dataset": {"name": "digits", "image_size": 8},
    "model": {"family": "mobilenetv2"},
    "distill": {"kd": True, "teacher": {"family": "resnet", "width": 8, "epochs": 1}},
    "train": {"epochs": 1}, "compress": {"finetune_epochs": 1}, "search": {"n_trials": 2},
}
KNOWN_RUN = [
    pytest.param({"compress.prune_ratio": 0.999, "compress.round_to": 16}, id="prune-0.999"),
    pytest.param({"model.width_mult": 1e-6, "compress.prune_ratio": 0.9, "compress.bits": 2}, id="tiny-width"),
    pytest.param({"model.stages": "cifar", "dataset.image_size": 8, "model.kernel_size": 11}, id="cifar-at-8px"),
    pytest.param({"train.momentum": 0.0}, id="momentum-0"),
    pytest.param({"train.batch_size": 1024, "train.schedule": "onecycle"}, id="one-step-onecycle"),
    pytest.param({"train.lr": 1e30}, id="lr-1e30-diverges"),  # a reported divergence, not a crash
    pytest.param({"distill.temperature": 1e200}, id="temperature-1e200",
                 marks=bug("OverflowError: (34, 'Numerical result out of range') in soft_target_loss: "
                           "temperature**2 (validate accepts any T > 0; T**2 overflows from ~1.4e154)")),
    pytest.param({"distill.temperature": 1e-300}, id="temperature-1e-300",
                 marks=bug("FloatingPointError: training diverged (loss nan) ...; lower train.lr: the KD term is "
                           "NaN for T this small, and the message blames the learning rate")),
    pytest.param({"train.lr": 1e39}, id="lr-1e39",
                 marks=bug("RuntimeError: value cannot be converted to type float without overflow (torch "
                           "optimizers keep lr as float32; validate accepts any lr > 0)")),
    pytest.param({"train.weight_decay": 1e39}, id="weight-decay-1e39",
                 marks=bug("RuntimeError: value cannot be converted to type float without overflow")),
    pytest.param({"train.weight_decay": 1e9}, id="weight-decay-1e9",
                 marks=bug("non-finite logits after one step: validate accepts any weight_decay >= 0; with "
                           "lr * weight_decay >> 1 one SGD step blows the weights up and the trial measures a NaN "
                           "model without an error")),
    pytest.param({"compress.finetune_lr": 1e39}, id="finetune-lr-1e39",
                 marks=bug("RuntimeError: value cannot be converted to type float without overflow")),
]


@pytest.mark.parametrize("fields", KNOWN_RUN)
def test_known_run_cases(fuzz_dir, fields):
    """Refused (exit 2, located), or accepted and it trains."""
    from autokd.sampling import sample

    data = copy.deepcopy(RUN_BASE)
    for key, value in fields.items():
        _put(data, tuple(key.split(".")), value)
    path = fuzz_dir / "known-run.yaml"
    res = check_validate(path, yaml.safe_dump(data, sort_keys=False), [])
    if res.code == 0:
        run_accepted(sample(load_space(path), optuna.trial.FixedTrial({})))
