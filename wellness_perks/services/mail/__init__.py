"""Mail we owe people, sent once each: the outbox (``queue``), what a message says
(``render``, ``mime``), and how it goes out (``transport``: SMTP, or ``.eml`` files in
``OUTBOX_DIR`` without an SMTP host)."""

from .queue import (
    BatchOutcome,
    MailRetryLater,
    owe,
    owed,
    resend_claim_mail,
    resend_failed,
    retry_delay,
    send,
    send_batch,
)
from .transport import PermanentMailError, close_pools

__all__ = ["BatchOutcome", "MailRetryLater", "PermanentMailError", "close_pools", "owe", "owed",
           "resend_claim_mail", "resend_failed", "retry_delay", "send", "send_batch"]
