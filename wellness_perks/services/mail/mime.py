"""Composing a multipart/alternative (text + HTML) message straight to bytes.

The same RFC 5322 / MIME structure the ``email`` package writes, without its parsing of every
header it is given back into objects: ASCII headers as they are, non-ASCII ones as RFC 2047
encoded words, bodies as 7bit when they are ASCII with short lines, quoted-printable otherwise,
CRLF line endings. The tests parse what it writes with the ``email`` package and compare it
with what that package writes.
"""

from __future__ import annotations

import binascii
import functools
import secrets
from email.header import Header


@functools.lru_cache(maxsize=1024)
def encode_header(value: str) -> str:
    """An RFC 2047 encoded header value. Remembered: a mail's subject is one of a few per
    program."""
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=998).encode()


def _body_part(subtype: str, body: str) -> bytes:
    text = body.replace("\r\n", "\n")
    if text.isascii() and all(len(line) <= 990 for line in text.split("\n")):
        encoding, payload = "7bit", text
    else:
        # binascii's quoted-printable: the same encoding as the email package's, in C.
        payload = binascii.b2a_qp(text.encode("utf-8"), istext=True).decode("ascii")
        encoding = "quoted-printable"
    if not payload.endswith("\n"):
        payload += "\n"
    head = (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n")
    return (head + payload.replace("\n", "\r\n")).encode("ascii")


def compose(*, headers: list[tuple[str, str]], text: str, html: str) -> bytes:
    """``headers`` in order (name, already-encoded value); returns the whole message."""
    boundary = "==wp" + secrets.token_hex(12) + "=="
    lines = [f"{name}: {value}" for name, value in headers]
    lines += ["MIME-Version: 1.0",
              f'Content-Type: multipart/alternative; boundary="{boundary}"', "", ""]
    head = "\r\n".join(lines).encode("ascii")
    delimiter = f"--{boundary}\r\n".encode("ascii")
    return b"".join((head, delimiter, _body_part("plain", text), b"\r\n",
                     delimiter, _body_part("html", html), b"\r\n",
                     f"--{boundary}--\r\n".encode("ascii")))
