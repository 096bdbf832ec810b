"""Error hierarchy for melplan.

Every error a user can cause carries the file, the field and the fix, so the CLI can print one
paragraph and exit non-zero without a traceback.  ``exit_code`` follows the click convention:
2 for bad input, 1 for a problem found while working on good input (infeasible, solver failure).
"""

from __future__ import annotations


class MelplanError(Exception):
    """Base class: a message plus where the problem is and how to fix it."""

    exit_code = 1

    def __init__(
        self, message: str, *, file: str | None = None, field: str | None = None, fix: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.fix = fix

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

    exit_code = 2


class CatalogError(InputError):
    """A catalog file or directory is malformed, incomplete or empty."""


class ClusterError(InputError):
    """A cluster file is malformed or inconsistent."""


class PlanFileError(InputError):
    """A plan file is malformed or does not match its catalog or cluster."""


class TraceError(InputError):
    """A failure trace is malformed."""


class InfeasiblePlanError(MelplanError):
    """No placement satisfies the constraints; the message names the cause."""


class SolverError(MelplanError):
    """The solver failed or found no feasible solution within its time limit."""


class DataError(MelplanError):
    """A dataset is missing or unreadable."""

    exit_code = 2


class TrainingError(MelplanError):
    """Training or measurement could not be carried out."""
