"""Composing a message (``mail/mime.py``): the bytes read back like the ``email`` package's;
7bit where the text allows, so links stay whole; non-ASCII text encoded."""

from __future__ import annotations

import email
import email.policy
import io

import pytest

from tests.helpers import LINK_RE
from wellness_perks.db import get_session
from wellness_perks.services import auth, imports
from wellness_perks.services.mail import mime


def _parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


@pytest.mark.parametrize(("subject", "text", "html"), [
    ("Your Headspace code", "Hello @ali,\n\n    HS-AAAA-0001\n", "<p>Hello @ali</p>"),
    ("Your Headspace · 6 months code", "Hello @عائشہ,\n\n    HS-AAAA-0001\n" + "x" * 1200,
     "<p>Hello @عائشہ — ça va?</p>"),
])
def test_composed_message_reads_back_like_the_email_packages(subject, text, html):
    headers = [("Subject", mime.encode_header(subject)), ("From", "Perks <perks@example.com>"),
               ("To", "ali@example.com"), ("Message-ID", "<wp.1@example.com>")]
    raw = mime.compose(headers=headers, text=text, html=html)
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line endings only
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    ours = _parse(raw)

    reference = email.message.EmailMessage(policy=email.policy.SMTP)
    for name, value in (("Subject", subject), ("From", "Perks <perks@example.com>"),
                        ("To", "ali@example.com"), ("Message-ID", "<wp.1@example.com>")):
        reference[name] = value
    reference.set_content(text)
    reference.add_alternative(html, subtype="html")
    theirs = _parse(reference.as_bytes())

    for name in ("Subject", "From", "To", "Message-ID"):
        assert str(ours[name]) == str(theirs[name]), name
    assert ours.get_content_type() == "multipart/alternative"
    for kind in ("plain", "html"):
        assert ours.get_body((kind,)).get_content() == theirs.get_body((kind,)).get_content()
    expected = "7bit" if text.isascii() and len(text) < 990 else "quoted-printable"
    assert ours.get_body(("plain",))["Content-Transfer-Encoding"] == expected


def test_ascii_mail_keeps_links_whole_and_non_ascii_is_encoded(app, factory, smtp_server):
    program = factory.program()
    with app.app_context():
        imports.import_creators(
            get_session(), program=program, actor="test",
            stream=io.BytesIO("handle,email,country\n@plain,plain@example.com,PK\n"
                              "@عائشہ,aisha@example.com,PK\n".encode()))
        for address in ("plain@example.com", "aisha@example.com"):
            auth.request_sign_in(get_session(), email=address)
    plain = smtp_server.wait_for_mail("plain@example.com")[0]
    urdu = smtp_server.wait_for_mail("aisha@example.com")[0]
    raw = plain.as_bytes()
    assert b"Content-Transfer-Encoding: 7bit" in raw
    assert LINK_RE.search(raw.decode("ascii")) is not None  # no soft line breaks in the link
    assert "@عائشہ" in urdu.get_body(("plain",)).get_content()
    assert LINK_RE.search(urdu.get_body(("plain",)).get_content()) is not None


INJECTIONS = ["\r\nBcc: attacker@evil.example", "\nBcc: attacker@evil.example",
              "\rBcc: attacker@evil.example", "\x85Bcc: x@evil.example",
              "\u2028Bcc: x@evil.example", "\x0bBcc: x@evil.example",
              "\r\n Bcc: folded@evil.example", "\r\n\r\n<p>a body of the attacker's</p>"]


@pytest.mark.parametrize("header", ["Subject", "From", "To", "Message-ID"])
@pytest.mark.parametrize("injection", INJECTIONS)
def test_no_header_value_with_a_line_break_is_ever_written(header, injection):
    values = {"Subject": "Your code", "From": "Perks <perks@example.com>",
              "To": "ali@example.com", "Message-ID": "<wp.1@example.com>"}
    values[header] += injection
    with pytest.raises(mime.HeaderInjection) as refused:
        mime.check_header(header, values[header])
    assert refused.value.header == header and "evil" not in str(refused.value)
    if injection.startswith("\r\n "):
        return  # folding, as an encoding writes it, continues the header: composing takes it
    with pytest.raises(mime.HeaderInjection):
        mime.compose(headers=list(values.items()), text="x", html="<p>x</p>")


@pytest.mark.parametrize("name", ["Bcc: x\r\nSubject", "Sub ject", "X:Y", ""])
def test_a_header_name_that_is_not_one_is_refused(name):
    with pytest.raises(mime.HeaderInjection):
        mime.compose(headers=[(name, "x")], text="x", html="x")


def test_a_long_non_ascii_subject_is_folded_with_crlf_and_reads_back_whole():
    subject = "Your " + "🧘" * 200 + " code"
    encoded = mime.encode_header(subject)
    assert "\r\n " in encoded  # folded: no line over 998 characters
    raw = mime.compose(headers=[("Subject", encoded), ("To", "ali@example.com")],
                       text="x", html="x")
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    assert str(_parse(raw)["Subject"]) == subject
