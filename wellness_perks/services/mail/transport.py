"""Delivering rendered messages: over SMTP (one kept-open connection per process, pipelined
where the server offers it), or as ``.eml`` files in ``OUTBOX_DIR`` when no SMTP host is set.

TLS to the SMTP server (STARTTLS, or TLS from the start) verifies the server's certificate and
its name against SMTP_HOST, with the system's CAs or those of SMTP_CA_FILE: a relay that cannot
prove it is SMTP_HOST gets neither the password nor a message. A certificate that does not
verify is an error that may pass (the operator fixes the name or the CA file), so the queue
retries it within its window. The password is never sent over a connection that is not
encrypted, unless SMTP_ALLOW_PLAINTEXT_AUTH says so (a relay on the same machine).

The transport knows nothing of the queue: it asks a ``Ledger`` whether each message is still
its to send when its turn comes, and tells it what became of each one.
"""

from __future__ import annotations

import os
import re
import smtplib
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Protocol

from flask import current_app


class PermanentMailError(Exception):
    """The server refused the message for good (5xx): retrying won't help."""


class PlaintextAuthRefused(Exception):
    """The SMTP login would go over a connection that is not encrypted."""


@dataclass
class Outgoing:
    """One rendered message, and the row it is owed by."""

    outbound_id: int
    to_email: str
    attempts: int
    kind: str
    claim_id: int | None
    raw: bytes = b""
    message_id: str = ""


class Ledger(Protocol):
    def still_ours(self, item: Outgoing) -> bool:
        """Whether the message may go now (no other worker holds it)."""

    def record(self, item: Outgoing, error: Exception | None) -> None:
        """What became of the message: sent (``None``), or the error."""


def deliver_all(outgoing: list[Outgoing], ledger: Ledger) -> None:
    """Deliver each message the ledger says is still ours when its turn comes, and record each
    one's outcome in the ledger right after it."""
    if not outgoing:
        return
    if current_app.config["SMTP_HOST"]:
        _pool().send_all(outgoing, ledger)
        return
    for item in outgoing:
        if not ledger.still_ours(item):
            continue
        try:
            _deliver_outbox(item)
        except OSError as exc:
            ledger.record(item, exc)
        else:
            ledger.record(item, None)


class SmtpPool:
    """One SMTP connection per process, kept open between batches and reopened when the server
    has dropped it. ``MAIL_RATE_LIMIT`` (messages a second, 0 = no limit) paces this process."""

    def __init__(self, config) -> None:
        self.host, self.port = config["SMTP_HOST"], config["SMTP_PORT"]
        self.user, self.password = config["SMTP_USER"], config["SMTP_PASSWORD"]
        self.ssl, self.starttls = config["SMTP_SSL"], config["SMTP_STARTTLS"]
        self.ca_file = config["SMTP_CA_FILE"] or None
        self.allow_plaintext_auth = config["SMTP_ALLOW_PLAINTEXT_AUTH"]
        self.timeout, self.from_addr = config["SMTP_TIMEOUT"], parseaddr(config["MAIL_FROM"])[1]
        self.rate = config["MAIL_RATE_LIMIT"]
        self.key = (self.host, self.port, self.user, self.ssl, self.starttls, self.ca_file,
                    self.allow_plaintext_auth, self.rate)
        self.connection: smtplib.SMTP | None = None
        self.next_send = 0.0
        self.lock = threading.Lock()

    def send_all(self, outgoing: list[Outgoing], ledger: Ledger) -> None:
        with self.lock:
            for item in outgoing:
                self._pace()
                if not ledger.still_ours(item):
                    continue
                try:
                    self._send(item)
                except Exception as exc:  # noqa: BLE001 - classified and recorded per message
                    ledger.record(item, _classify(exc))
                else:
                    ledger.record(item, None)

    def _send(self, item: Outgoing) -> None:
        for attempt in (1, 2):
            fresh = self.connection is None
            try:
                if fresh:
                    self.connection = self._connect()
                transact(self.connection, self.from_addr, item.to_email, item.raw)
                return
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError):
                self.close()
                if fresh or attempt == 2:  # a new connection failed: the server is the problem
                    raise

    def _connect(self) -> smtplib.SMTP:
        if self.ssl:
            connection = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                          context=self._tls_context())
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.starttls and not self.ssl:
                # Refused (SMTPNotSupportedError) by a server that does not offer it: never
                # a fall back to plain text.
                connection.starttls(context=self._tls_context())
            if self.user:
                if not isinstance(connection.sock, ssl.SSLSocket) and not (
                        self.allow_plaintext_auth):
                    raise PlaintextAuthRefused(
                        "SMTP_USER is set but the connection to the SMTP server is not "
                        "encrypted: set SMTP_STARTTLS=1 or SMTP_SSL=1, or "
                        "SMTP_ALLOW_PLAINTEXT_AUTH=true for a server on this machine")
                connection.login(self.user, self.password)
        except BaseException:
            connection.close()
            raise
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        """Certificate and host name verified (against SMTP_HOST), by the system's CAs or
        SMTP_CA_FILE's."""
        return ssl.create_default_context(cafile=self.ca_file)

    def _pace(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        if now < self.next_send:
            time.sleep(self.next_send - now)
        self.next_send = max(now, self.next_send) + 1.0 / self.rate

    def close(self) -> None:
        if self.connection is not None:
            try:
                self.connection.close()
            finally:
                self.connection = None


_LEADING_DOT = re.compile(rb"(?m)^\.")


def transact(connection: smtplib.SMTP, from_addr: str, to_addr: str, raw: bytes) -> None:
    """Send one message over an open connection; raises what ``smtplib.SMTP.sendmail`` raises,
    so failures are classified the same way.

    Where the server offers PIPELINING (RFC 2920; every large provider does), MAIL, RCPT and
    DATA go in one write and the message in a second: two round trips instead of smtplib's
    four, and half the wake-ups on both ends. Elsewhere (or for an internationalised address)
    this is ``sendmail``.
    """
    connection.ehlo_or_helo_if_needed()
    if not (connection.has_extn("pipelining") and from_addr.isascii() and to_addr.isascii()):
        connection.sendmail(from_addr, [to_addr], raw)
        return
    size = f" SIZE={len(raw)}" if connection.has_extn("size") else ""
    connection.send(f"MAIL FROM:<{from_addr}>{size}\r\nRCPT TO:<{to_addr}>\r\nDATA\r\n"
                    .encode("ascii"))
    (mail_code, mail_reply), (rcpt_code, rcpt_reply), (data_code, data_reply) = (
        connection.getreply(), connection.getreply(), connection.getreply())
    if data_code == 354 and (mail_code != 250 or rcpt_code not in (250, 251)):
        connection.send(b".\r\n")  # a server that took DATA anyway: end it empty (RFC 2920)
        connection.getreply()
    if mail_code != 250:
        _abandon(connection, mail_code)
        raise smtplib.SMTPSenderRefused(mail_code, mail_reply, from_addr)
    if rcpt_code not in (250, 251):
        _abandon(connection, rcpt_code)
        raise smtplib.SMTPRecipientsRefused({to_addr: (rcpt_code, rcpt_reply)})
    if data_code != 354:
        _abandon(connection, data_code)
        raise smtplib.SMTPDataError(data_code, data_reply)
    body = _LEADING_DOT.sub(b"..", raw)
    connection.send(body + (b".\r\n" if body.endswith(b"\r\n") else b"\r\n.\r\n"))
    code, reply = connection.getreply()
    if code != 250:
        _abandon(connection, code)
        raise smtplib.SMTPDataError(code, reply)


def _abandon(connection: smtplib.SMTP, code: int) -> None:
    """After a refusal: as smtplib does, close on 421 (the server is closing), else RSET."""
    if code == 421:
        connection.close()
        return
    try:
        connection.rset()
    except smtplib.SMTPServerDisconnected:
        pass


_pools: dict[tuple, SmtpPool] = {}
_pools_lock = threading.Lock()


def _pool() -> SmtpPool:
    pool = SmtpPool(current_app.config)
    with _pools_lock:
        return _pools.setdefault(pool.key, pool)


def close_pools() -> None:
    """Close this process's SMTP connections (at shutdown, and between tests)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        with pool.lock:
            pool.close()


def _classify(exc: Exception) -> Exception:
    """5xx refusals are permanent; everything else may pass."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _msg in exc.recipients.values()]
        if codes and all(code >= 500 for code in codes):
            return PermanentMailError(f"recipient refused ({codes[0]})")
    if isinstance(exc, smtplib.SMTPSenderRefused | smtplib.SMTPDataError) and exc.smtp_code >= 500:
        return PermanentMailError(f"refused by the server ({exc.smtp_code})")
    return exc


def _deliver_outbox(item: Outgoing) -> None:
    outbox = Path(current_app.config["OUTBOX_DIR"])
    outbox.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    target = outbox / f"{stamp}-{item.outbound_id:08d}-{item.kind}.eml"
    fd, tmp = tempfile.mkstemp(dir=outbox, prefix=".tmp-", suffix=".eml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(item.raw)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
