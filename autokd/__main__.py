"""``python -m autokd`` runs the CLI."""

from autokd.cli import entry

entry()
