"""The ``autokd`` command line: one typer app, one module per command group, one error boundary (:func:`main`)."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from autokd.errors import AutokdError

# typer >= 0.26 vendors click: its ClickException derives from typer.TyperException. Older typer re-uses click.
_CLI_ERRORS: tuple[type[BaseException], ...] = (typer.TyperException,)
try:  # pragma: no cover - depends on the installed typer
    import click

    _CLI_ERRORS += (click.ClickException,)
except ImportError:  # pragma: no cover
    pass

app = typer.Typer(
    name="autokd",
    help="Declarative AutoML search: NAS, pruning, quantization and knowledge distillation as joint "
         "hyperparameters, with a report of whether KD's gain persists.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the worker's own trial is re-queued) but exiting 143."""

    reason = "terminated (SIGTERM)"  # recorded on the interrupted trial and its re-queued retry


terminated = threading.Event()  # typer turns every KeyboardInterrupt into exit code 130: remember which it was


def _on_sigterm(signum: int, frame: Any) -> None:
    # Only a flag: an exception raised from a signal handler is dropped (with a printed traceback) when the signal
    # lands in a finalizer or weakref callback. The search raises Terminated at its next progress event (each
    # epoch, each stage), where it is safe; other commands are short and finish.
    terminated.set()


def _version(value: bool) -> None:
    if value:
        from autokd import __version__

        typer.echo(f"autokd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass  # the app's help text is Typer(help=...) above


from autokd.cli import export, plan, report, schema, search, studies, validate  # noqa: E402  (commands register on `app`)

__all__ = ["app", "main"]

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143
EXIT_TEMPFAIL = 75  # the storage did not answer within --storage-retry: try again later


def _err(console: Console, line: str) -> None:
    console.print(Text("error: ", style="bold red") + Text(line, style="red"), soft_wrap=True)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; the one place that turns exceptions into messages and exit codes.

    - ``AutokdError`` (bad space, flags, storage, data): one red line per problem on stderr, exit 2;
    - ``StorageUnavailable`` (the storage stayed down past ``--storage-retry``): one line with the resume command,
      exit 75 (EX_TEMPFAIL);
    - usage errors from typer/click: one line, exit 2;
    - Ctrl-C: the command that resumes, exit 130; SIGTERM the same, exit 143 (this worker's trial is re-queued);
    - anything else: one line, exit 1 (``AUTOKD_DEBUG=1`` shows the traceback).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    console = Console(stderr=True)
    debug = os.environ.get("AUTOKD_DEBUG", "") not in ("", "0")
    previous = None
    terminated.clear()
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(args, console, debug)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(args: list[str], console: Console, debug: bool) -> int:
    try:
        command = typer.main.get_command(app)
        rv = command.main(args=args, prog_name="autokd", standalone_mode=False)
        code = int(rv or 0) if isinstance(rv, int) else 0
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (and SIGTERM) into Exit(130)
            _interrupted(console, args)
            return EXIT_TERMINATED if terminated.is_set() else EXIT_INTERRUPTED
        return code
    except AutokdError as exc:
        if debug:
            console.print_exception()
        lines = exc.lines
        if exc.exit_code == EXIT_TEMPFAIL and "--progress-json" not in args:  # (a worker of --workers: its
            lines = [f"{lines[0]}; resume with: autokd {shlex.join(args)}", *lines[1:]]  # parent says it)
        for line in lines:
            _err(console, line)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except SystemExit as exc:  # shell completion (_AUTOKD_COMPLETE, --show/--install-completion) exits this way
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_INTERNAL)
    except (KeyboardInterrupt, typer.Abort):
        _interrupted(console, args)
        return EXIT_TERMINATED if terminated.is_set() else EXIT_INTERRUPTED
    except _CLI_ERRORS as exc:  # usage errors (unknown option, bad value, missing argument): one line
        ctx = getattr(exc, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "autokd"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if not message.strip():  # `autokd` alone: the help is already shown
            return EXIT_INPUT
        _err(console, f"{cmd}: {message} (see '{cmd} --help')")
        return EXIT_INPUT
    except Exception as exc:  # the last line of defence: never a traceback unless asked for
        if debug:
            console.print_exception()
        _err(console, f"internal error: {type(exc).__name__}: {exc} (set AUTOKD_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL


def _interrupted(console: Console, args: list[str]) -> None:
    console.print(Text("\ninterrupted. ", style="yellow") +
                  Text(f"Finished trials are saved; resume with: autokd {shlex.join(args)}"))


def entry() -> None:  # pragma: no cover - console script
    sys.exit(main())
