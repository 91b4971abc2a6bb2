"""``autokd schema``: the JSON Schema of a space file, for editors (yaml-language-server) and other tools."""

from __future__ import annotations

from pathlib import Path

import typer

from autokd.cli import app
from autokd.errors import AutokdError
from autokd.space.jsonschema import SCHEMA_PATH, space_json_schema_text


@app.command()
def schema(output: Path | None = typer.Option(None, "--output", "-o", metavar="FILE", dir_okay=False,
                                              help=f"Write the schema to FILE (the repository keeps it in "
                                                   f"{SCHEMA_PATH}) instead of printing it.")) -> None:
    """Print the JSON Schema (draft-07) of a space file: every field with its description, allowed values
    and default, and the searchable {choices: [...]} / {low:, high:, step:?, log:?} forms.

    Point an editor at it with a first line '# yaml-language-server: $schema=PATH' in the space file."""
    text = space_json_schema_text()
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise AutokdError(f"{output}: cannot write the schema: {exc.strerror or exc}") from None
    typer.echo(f"wrote the JSON Schema of a space file to {output} ({len(text.encode()):,} bytes)")
