"""The `charter` command line (docs/cli.md): `main` and its exit codes; the renderers of events
and runs in `charter.cli.render`.
"""

from __future__ import annotations

from charter.cli.commands import (
    EXIT_APPROVAL,
    EXIT_BLOCKED,
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    EXIT_WAITING,
    main,
)

__all__ = [
    "EXIT_APPROVAL",
    "EXIT_BLOCKED",
    "EXIT_CANCELLED",
    "EXIT_FAILED",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "EXIT_WAITING",
    "main",
]
