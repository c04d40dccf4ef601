"""Domain errors carrying a message fit to show the person who caused them."""

from __future__ import annotations


class DomainError(Exception):
    """Base of errors a user can act on; ``str(exc)`` is the user-facing message."""

    status_code = 400


class NotFound(DomainError):
    status_code = 404


class ProgramNotFound(NotFound):
    def __init__(self, slug: str) -> None:
        super().__init__(f"no program with slug {slug!r}")


class NotEligible(DomainError):
    status_code = 403


class ClaimWindowNotOpen(DomainError):
    status_code = 409


class InvalidInput(DomainError):
    """Bad values given to a command or form; ``field`` names what was wrong."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Conflict(DomainError):
    status_code = 409
