"""Composing a multipart/alternative (text + HTML) message straight to bytes.

The same RFC 5322 / MIME structure the ``email`` package writes, without its parsing of every
header it is given back into objects: ASCII headers as they are, non-ASCII ones as RFC 2047
encoded words, bodies as 7bit when they are ASCII with short lines, quoted-printable otherwise,
CRLF line endings. The tests parse what it writes with the ``email`` package and compare it
with what that package writes.

No header value may hold a line break: one would end the header there and start headers of the
sender's choosing (``Bcc:``). Values are refused where they enter (a program's name); this is
the guard behind that, for every header of every message (``HeaderInjection``).
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
from email.header import Header

# Everything that breaks a line somewhere: CR and LF, and the separators str.splitlines() and
# Unicode also take for one (VT, FF, FS, GS, RS, NEL, LINE and PARAGRAPH SEPARATOR).
LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# In an encoded value, a line break other than the folding an encoding makes (CRLF and then a
# space or a tab, which continues the header: RFC 5322 section 2.2.3).
_BREAK_NOT_FOLDING = re.compile(
    "\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ':'


class HeaderInjection(ValueError):
    """A header value with a line break in it (the value itself is never repeated)."""

    def __init__(self, header: str) -> None:
        super().__init__(f"the {header} header value contains a line break: refused")
        self.header = header


def check_header(name: str, value: str) -> str:
    """``value``, if it is one line (as given, before any encoding); else HeaderInjection."""
    _check_name(name)
    if LINE_BREAK.search(value):
        raise HeaderInjection(name)
    return value


def _check_encoded(name: str, value: str) -> str:
    _check_name(name)
    if _BREAK_NOT_FOLDING.search(value):
        raise HeaderInjection(name)
    return value


def _check_name(name: str) -> None:
    if not _HEADER_NAME.fullmatch(name):
        raise HeaderInjection("(invalid name)")


@functools.lru_cache(maxsize=1024)
def encode_header(value: str) -> str:
    """An RFC 2047 encoded header value. Remembered: a mail's subject is one of a few per
    program."""
    if value.isascii():
        return value
    # Folded with CRLF and a space (a continuation, not a new header), each line short enough
    # that with the header's name it stays under RFC 5322's 998 characters.
    return Header(value, "utf-8", maxlinelen=900).encode(linesep="\r\n")


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
    """``headers`` in order (name, already-encoded value); returns the whole message.
    HeaderInjection if a value has a line break."""
    boundary = "==wp" + secrets.token_hex(12) + "=="
    lines = [f"{name}: {_check_encoded(name, value)}" for name, value in headers]
    lines += ["MIME-Version: 1.0",
              f'Content-Type: multipart/alternative; boundary="{boundary}"', "", ""]
    head = "\r\n".join(lines).encode("ascii")
    delimiter = f"--{boundary}\r\n".encode("ascii")
    return b"".join((head, delimiter, _body_part("plain", text), b"\r\n",
                     delimiter, _body_part("html", html), b"\r\n",
                     f"--{boundary}--\r\n".encode("ascii")))
