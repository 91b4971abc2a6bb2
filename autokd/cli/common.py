"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from autokd.errors import AutokdError, Problem

SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="PATH=VALUE",
    help="Override a field of the space, e.g. --set train.epochs=1 (repeatable; VALUE is parsed as YAML).")]
StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", metavar="URL", help="Optuna storage URL (default: sqlite:///studies/<study>.db).")]
StudyOpt = Annotated[Optional[str], typer.Option(
    "--study", metavar="NAME", help="Study name (default: the space's name).")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", envvar="AUTOKD_CACHE_DIR", metavar="DIR",
    help="Teacher cache folder (default: studies/teachers).")]
SpaceArg = Annotated[Path, typer.Argument(metavar="SPACE", help="The search space YAML file.",
                                          show_default=False)]
StudySpaceArg = Annotated[Optional[Path], typer.Argument(
    metavar="[SPACE]", help="The space file whose study to read.", show_default=False)]
MarginOpt = Annotated[Optional[float], typer.Option(
    "--margin", metavar="PTS", min=0.01, max=50.0, show_default=False,
    help="Orthogonality margin in accuracy points: a technique is 'orthogonal' to KD when every difference of KD's "
         "gain between its levels has a 90% interval inside ±PTS [default: the space's search.design.margin, "
         "else 1].")]


def open_study(space: Optional[Path], storage: Optional[str], study: Optional[str], *, command: str,
               overrides: list[str] | None = None):
    """``(study, the space it was searched with)`` from a SPACE file and/or --storage/--study, for commands that
    read a study (report, export). The SPACE file gives the study's name (``--study`` wins); it is loaded without
    the checks of whether this machine could *run* it (data in memory, NNI): a study made elsewhere reads anywhere."""
    from autokd.space import load_space
    from autokd.study import default_storage, load_study

    if space is not None:
        name = study or load_space(space, overrides=overrides or [], machine=False).name
    elif study is not None:
        name = study
    else:
        raise AutokdError(Problem("give a SPACE file, or --study NAME (with --storage URL for a non-default "
                                  "storage)", file=command))
    return load_study(storage=storage or default_storage(name), study_name=name)
