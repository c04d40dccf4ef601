"""Every address that enters the system goes through here."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

from .errors import InvalidInput


def normalise_email(raw: str) -> str:
    """The canonical form of an address (email-validator, then lower-cased), or InvalidInput."""
    candidate = (raw or "").strip()
    if not candidate:
        raise InvalidInput("email address is empty", field="email", code="email_empty")
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput(f"not a valid email address: {exc}", field="email",
                           code="email_invalid", detail=str(exc)) from exc
    return result.normalized.lower()


def mask_email(address: str) -> str:
    """An address as a page may show it to whoever holds a link: the first letter of the
    mailbox and the domain (``a***@example.com``)."""
    local, _, domain = address.rpartition("@")
    return f"{local[:1]}***@{domain}"
