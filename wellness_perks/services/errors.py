"""Domain errors: what went wrong as a stable ``code`` (with ``params``), for each surface to
answer in its own way (a page or JSON in the reader's language, a command's message).

``str(exc)`` is a plain English sentence for managers and logs: the command line prints it,
and the JSON API sends it along with the code. Errors a creator can meet carry no English
here: their words are in ``templates/messages.html``, by code.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of errors a user can act on."""

    status_code = 400
    code = "invalid_request"

    def __init__(self, message: str | None = None, **params) -> None:
        super().__init__(message or self.code)
        self.params = params


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class ProgramNotFound(NotFound):
    code = "program_not_found"

    def __init__(self, slug: str) -> None:
        super().__init__(f"no program with slug {slug!r}", slug=slug)


class NotOnList(NotFound):
    """A creator asked for a program whose list they are not on. To them the program does not
    exist: nothing is recorded, and it is answered as an unknown program is."""

    code = "not_on_list"

    def __init__(self, *, program_id: int, creator_id: int) -> None:
        super().__init__(f"creator {creator_id} is not on the list of program {program_id}",
                         program_id=program_id, creator_id=creator_id)


class ClaimWindowNotOpen(DomainError):
    """A claim before the program's window opens (``name``, ``opens_at``)."""

    status_code = 409
    code = "claim_window_not_open"


class ClaimsPaused(DomainError):
    """A claim while a manager has paused claiming (``name``): nothing is recorded, so the
    creator claims again once claiming resumes."""

    status_code = 409
    code = "claims_paused"


class InvalidInput(DomainError):
    """Bad values given to a command or form; ``field`` names what was wrong."""

    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None, *, code: str | None = None,
                 **params) -> None:
        super().__init__(message, **params)
        self.field = field
        if code is not None:
            self.code = code


class Conflict(DomainError):
    status_code = 409
    code = "conflict"

    def __init__(self, message: str | None = None, *, code: str | None = None,
                 **params) -> None:
        super().__init__(message, **params)
        if code is not None:
            self.code = code

class NoCodeHeld(Conflict):
    """The creator holds no code in the program (no allocated claim): nothing to mail again."""

    code = "no_code_held"

    def __init__(self, email: str) -> None:
        super().__init__(f"{email} holds no code in this program (no allocated claim)",
                         email=email)


class ResendTooSoon(Conflict):
    """A claim's code mail was queued less than ``RESEND_MIN_INTERVAL_MINUTES`` ago
    (``minutes``: how long until it may be sent again)."""

    status_code = 429
    code = "resend_too_soon"

    def __init__(self, *, claim_id: int, minutes: int) -> None:
        plural = "s" if minutes != 1 else ""
        super().__init__(f"a code mail was queued for claim #{claim_id} less than the minimum "
                         f"interval ago: try again in {minutes} minute{plural}",
                         claim_id=claim_id, minutes=minutes)
