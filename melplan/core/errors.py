"""Every error melplan raises on purpose, in one module.

Every error a user can cause carries structured fields: ``file`` (the file at fault, or None),
``field`` (the field or option, e.g. ``servers[2].memory_mb`` or ``--servers``) and ``fix`` (what to
do), so the CLI prints one paragraph and exits without a traceback, and callers decide by *class*
and fields, never by matching message text.  ``exit_code`` follows the click convention:
:data:`EXIT_BAD_INPUT` (2) for bad input (:class:`InputError` and its subclasses),
:data:`EXIT_FAILED` (1) for a problem found while working on good input (infeasible, solver failure).
"""

from __future__ import annotations

from typing import Any

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class MelplanError(Exception):
    """Base class: a message plus where the problem is and how to fix it."""

    exit_code = EXIT_FAILED

    def __init__(
        self, message: str, *, file: str | None = None, field: str | None = None, fix: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.fix = fix

    def to_dict(self) -> dict[str, Any]:
        """The structured fields, for machine-readable error output."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "file": self.file,
            "field": self.field,
            "fix": self.fix,
            "exit_code": self.exit_code,
        }

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.field:
            where.append(f"field '{self.field}'")
        text = (": ".join([", ".join(where), self.message]) if where else self.message).rstrip(".") + "."
        if self.fix:
            text += " Fix: " + self.fix.rstrip(".") + "."
        return text


class InputError(MelplanError):
    """Bad input given by the user (a file or an option)."""

    exit_code = EXIT_BAD_INPUT


class CatalogError(InputError):
    """A catalog file or directory is malformed, incomplete or empty."""


class ClusterError(InputError):
    """A cluster file is malformed or inconsistent."""


class PlanFileError(InputError):
    """A plan file is malformed or does not match its catalog or cluster."""


class ServicesError(InputError):
    """A services file (several services on one site) is malformed or inconsistent."""


class TraceError(InputError):
    """A failure trace is malformed."""


class InfeasiblePlanError(MelplanError):
    """No placement satisfies the constraints; the message names the cause."""


class SolverError(MelplanError):
    """The solver failed or found no feasible solution within its time limit."""


class DataError(MelplanError):
    """A dataset is missing or unreadable."""

    exit_code = EXIT_BAD_INPUT


class TrainingError(MelplanError):
    """Training or measurement could not be carried out."""


class EmptyCatalogError(CatalogError):
    """A catalog directory holds no family (for the dataset asked for)."""


class SelectorError(InputError):
    """A selector was given a server, plan or option it cannot use (unknown server name, ...)."""


class ExportError(MelplanError):
    """Objects could not be named or built consistently (a bug or an astronomically rare hash clash)."""


class SearchStateError(InputError):
    """The search state file is unreadable or was written with other settings."""


class PickError(InputError):
    """A ``--pick``, ``--prefer`` or ``--weights`` expression cannot be parsed or names no objective."""


class ObjectiveError(InputError):
    """An objective name is unknown, repeated, or misses its parameter."""


class NoFamilyMatchesError(InfeasiblePlanError):
    """No family of the catalog satisfies every ``--pick`` constraint."""


class ProtocolError(Exception):
    """A request the server refuses; ``status`` is the HTTP status (4xx) to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CallFailed(Exception):
    """A component call that failed; ``status`` is the HTTP status when one came back."""

    def __init__(self, url: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status

    @property
    def server_fault(self) -> bool:
        """A dead, hung, loading or broken server (not a request the component refused as bad)."""
        return self.status is None or self.status >= 500


class ServeError(MelplanError):
    """The deployment could not start (a component failed to load, a port is taken, ...)."""

    exit_code = 1
