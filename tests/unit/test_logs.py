"""Codes are money: no code value and no sign-in token appears in any log line, whether the
mail carrying it was sent or refused."""

from __future__ import annotations

import logging

from tests.helpers import csrf_token, redemption_code, sign_in_link, use_sign_in_link


def _sign_in(client, smtp_server, address: str) -> str:
    """Sign in through the pages; the token of the link used."""
    page = client.get("/login")
    client.post("/login", data={"email": address, "csrf_token": csrf_token(page.text)})
    link = sign_in_link(smtp_server.wait_for_mail(address, "sign-in")[-1])
    use_sign_in_link(client, link.removeprefix("http://localhost"))
    return link.rsplit("/", 1)[1]


def _claim(client) -> None:
    page = client.get("/programs/headspace-6m")
    client.post("/programs/headspace-6m/claim", data={"csrf_token": csrf_token(page.text)})


def test_no_code_or_token_in_any_log_record(app, factory, smtp_server, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, every level, SQLAlchemy's included
    program = factory.program(quota=2)
    factory.creators(program, ["ayesha@example.com", "bilal@example.com"])
    codes = ["HS-SECRET-0001", "HS-SECRET-0002"]
    factory.codes(program, codes)
    ayesha, bilal = app.test_client(), app.test_client()

    tokens = [_sign_in(ayesha, smtp_server, "ayesha@example.com"),
              _sign_in(bilal, smtp_server, "bilal@example.com")]
    _claim(ayesha)
    assert redemption_code(smtp_server.wait_for_mail("ayesha@example.com", "code")[0]) in codes
    # A refused send: the mail carrying the second code fails, and that is logged too.
    smtp_server.refuse_with = "451 4.3.0 try again later"
    _claim(bilal)
    assert smtp_server.refused == 1

    # Everything but aiosmtpd ("mail.log"): it is the receiving mail server, not us.
    lines = [record.getMessage() for record in caplog.records
             if not record.name.startswith("mail.log")]
    # We did capture the app's logging, the refusal included.
    assert any("event=allocation.batch" in line for line in lines)
    assert any("event=mail.retry_scheduled" in line for line in lines)
    for line in lines:
        for secret in (*codes, *tokens):
            assert secret not in line, f"secret in log line: {line}"
