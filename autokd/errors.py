"""One exception hierarchy for everything a user can get wrong.

The CLI's single error boundary maps :class:`AutokdError` to one red line per problem and exit code 2.
Messages are written for people: they name the file and line where there is one, the dotted path of the field,
what is wrong and, where it helps, the valid options.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One located problem: ``file:line: dotted.path: message``."""

    message: str
    path: str = ""
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.path}: " if self.path else ""
        return _one_line(f"{where}{field}{self.message}")


def _one_line(text: str) -> str:
    """One problem is one line: newlines and other control characters (from keys, values or ``--set`` text) are
    shown escaped, as Python would write them."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def hint(word: Any, options: Sequence[Any]) -> str:
    """`` (did you mean 'x'? valid: a, b, c)``: the close match first, then every valid option ("" if none)."""
    names = [str(o) for o in options]
    match = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    valid = f"valid: {', '.join(names)}" if names else ""
    if match:
        return f" (did you mean {match[0]!r}? {valid})" if valid else f" (did you mean {match[0]!r}?)"
    return f" ({valid})" if valid else ""


class AutokdError(Exception):
    """Base class: anything the user can fix. Carries one or more :class:`Problem` lines."""

    exit_code = 2  # the CLI's exit code for it

    def __init__(self, problems: str | Problem | list[Problem]):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    @property
    def lines(self) -> list[str]:
        return [str(p) for p in self.problems]


class SpaceError(AutokdError):
    """The search space (YAML file or ``--set`` override) is invalid."""


class DataError(AutokdError):
    """A dataset is missing or unreadable."""


class StudyError(AutokdError):
    """The study or its storage cannot be used as asked (unknown study, space changed, bad URL)."""


class StorageUnavailable(AutokdError):
    """The study's storage did not answer within the retry budget (``--storage-retry``): exit code 75
    (EX_TEMPFAIL, "try again later"), not 2 -- nothing the user wrote is wrong."""

    exit_code = 75


class CacheError(AutokdError):
    """A cache or checkpoint file cannot be used."""


class TeacherError(AutokdError):
    """The teacher did not train: its loss or weights became non-finite, or it ended no better than chance."""
