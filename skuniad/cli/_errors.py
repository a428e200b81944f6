"""How the commands fail: domain errors in one line (exit 1), Ctrl-C with exit 130."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


class CliError(Exception):
    """A domain error to report in one line (exit code 1)."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line, or its type's name when it has none."""
    return " ".join(str(exc).split()) or type(exc).__name__


def is_domain_error(exc: Exception) -> bool:
    """A problem with the input or the machine (one line, exit 1), not a bug (a traceback)."""
    from skuniad.errors import SkuniadError

    return isinstance(exc, CliError | SkuniadError | ValueError | OSError)


def one_line_message(exc: BaseException) -> str:
    message = one_line(exc)
    from skuniad.device import DeviceOutOfMemoryError

    if isinstance(exc, DeviceOutOfMemoryError):  # the library's advice, in option words
        message = message.replace("batch_size=", "--batch-size ").replace(
            "batch_size", "--batch-size"
        )
    return message


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn domain errors into one line + exit 1, and Ctrl-C into exit 130."""
    try:
        yield
    except KeyboardInterrupt as exc:
        if str(exc):  # TrainingInterrupted says what was kept
            typer.echo(str(exc), err=True)
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if not is_domain_error(exc):
            raise
        typer.echo(f"Error: {one_line_message(exc)}", err=True)
        raise typer.Exit(EXIT_ERROR) from None
