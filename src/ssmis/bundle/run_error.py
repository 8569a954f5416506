"""How a check stops ``python -m monai.bundle run``: with its message as the last line, not inside a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

from .command_line import config_files_on_command_line

__all__ = ["RunError", "refuse"]


class RunError(SystemExit):
    """A bad argument or setting of a ``monai.bundle run`` command line.

    MONAI wraps any ``Exception`` raised in a config expression in ``RuntimeError("Failed to evaluate …")``, so a
    check's message stood between two tracebacks, and the last line named only the expression. A ``SystemExit``
    passes through: Python prints the message alone and exits with status 1, as argparse does.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def refuse(message: str, error: type[Exception] = ValueError, argv: list[str] | None = None) -> NoReturn:
    """Raise :class:`RunError` on a ``monai.bundle run`` command line (one with ``--config_file``), and
    ``error(message)`` anywhere else: a server or a script that builds the workflow itself catches that."""
    if config_files_on_command_line(sys.argv if argv is None else argv):
        raise RunError(message)
    raise error(message)
