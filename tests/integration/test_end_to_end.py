"""The whole path with real processes: CLI set-up, gunicorn, a Celery worker on Redis,
PostgreSQL, and mail over SMTP.

Three creators are eligible and two codes are in stock: the first two creators sign in with the
emailed link, claim, and get a distinct code by mail and on the page; a repeated claim changes
nothing; the third creator is waitlisted. No code ever reaches the processes' log output.
"""

from __future__ import annotations

import re
import secrets
from urllib.parse import urljoin

import pytest
import requests
import sqlalchemy as sa

from harness.waiting import wait_for
from tests.helpers import csrf_token, html_body, redemption_code, sign_in_link, text_body
from wellness_perks.models import Claim, ClaimState, MailKind, MailStatus, OutboundEmail

pytestmark = pytest.mark.integration

SLUG = "headspace-6m"
PROGRAM_PATH = f"/programs/{SLUG}"
REDEEM_URL = "https://app.example/redeem?code={code}"
STATE_RE = re.compile(r'<span class="state[^"]*">(\w+)</span>')
PAGE_CODE_RE = re.compile(r'<p class="code" id="code">([^<]+)</p>')
RECEIVED_RE = re.compile(r"Task wellness_perks\.(\w+)\[([0-9a-f-]+)\] received")
HTTP_TIMEOUT = 10


# --------------------------------------------------------------------------- steps


def set_up_program(stack, tmp_path, creators: list[str], codes: list[str]) -> None:
    """What an operator does, through the installed CLI, against the same settings."""
    creators_csv = tmp_path / "creators.csv"
    creators_csv.write_text("handle,email,country\n" + "".join(
        f"@{address.split('@')[0]},{address},PK\n" for address in creators))
    codes_txt = tmp_path / "codes.txt"
    codes_txt.write_text("".join(f"{code}\n" for code in codes))

    assert "newest schema" in stack.cli("init-db").stdout
    assert "created" in stack.cli("create-program", "--slug", SLUG, "--name",
                                  "Headspace · 6 months", "--quota", "10",
                                  "--redeem-url", REDEEM_URL).stdout
    out = stack.cli("import-creators", SLUG, str(creators_csv)).stdout
    assert f"imported {len(creators)}, duplicate 0, invalid 0" in out
    out = stack.cli("import-codes", SLUG, str(codes_txt), "--no-expiry").stdout
    assert f"imported {len(codes)}, duplicate 0, invalid 0" in out


def sign_in(stack, address: str) -> tuple[requests.Session, str]:
    """Form, mail, link: returns the signed-in session and the link it used."""
    http = requests.Session()
    page = http.get(stack.url("/login"), timeout=HTTP_TIMEOUT)
    assert page.status_code == 200
    before = len(stack.mail.to(address, "sign-in"))
    response = http.post(stack.url("/login"),
                         data={"email": address, "csrf_token": csrf_token(page.text)},
                         allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert response.status_code == 302, response.text
    assert urljoin(stack.base_url, response.headers["Location"]) == stack.url("/login/sent")

    mail = stack.mail.wait_for_mail(address, "sign-in", count=before + 1)[-1]
    link = sign_in_link(mail)
    assert link.startswith(stack.url("/login/")), link  # built from BASE_URL by the worker
    page = http.get(link, allow_redirects=False, timeout=HTTP_TIMEOUT)  # one button
    assert page.status_code == 200, page.text
    response = http.post(link, data={"csrf_token": csrf_token(page.text)},
                         allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert response.status_code == 302, response.text
    assert urljoin(stack.base_url, response.headers["Location"]) == stack.url("/")
    home = http.get(stack.url("/"), timeout=HTTP_TIMEOUT)
    assert home.status_code == 200 and "Headspace · 6 months" in home.text
    return http, link


def program_page(stack, http: requests.Session) -> requests.Response:
    page = http.get(stack.url(PROGRAM_PATH), timeout=HTTP_TIMEOUT)
    assert page.status_code == 200, page.text
    return page


def claim(stack, http: requests.Session, token: str) -> None:
    response = http.post(stack.url(f"{PROGRAM_PATH}/claim"), data={"csrf_token": token},
                         allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert response.status_code == 302, response.text
    assert urljoin(stack.base_url, response.headers["Location"]) == stack.url(PROGRAM_PATH)


def claim_and_wait(stack, http: requests.Session) -> tuple[str, requests.Response, str]:
    """Claim from the program page; wait until the worker decided. Returns state, page, token."""
    page = program_page(stack, http)
    assert "Claim</button>" in page.text
    token = csrf_token(page.text)
    claim(stack, http, token)

    def decided():
        page = program_page(stack, http)
        match = STATE_RE.search(page.text)
        return match and match.group(1) != "Pending" and (match.group(1), page)

    state, page = wait_for(decided, timeout=20, interval=0.1, what="the claim to be decided")
    return state, page, token


def quiescent(stack) -> bool:
    """No claim waiting for the worker and no mail owed: everything queued has been done."""
    with stack.db() as conn:
        pending = conn.execute(sa.select(sa.func.count()).select_from(Claim)
                               .where(Claim.state == ClaimState.pending)).scalar_one()
        unsent = conn.execute(sa.select(sa.func.count()).select_from(OutboundEmail)
                              .where(OutboundEmail.status != MailStatus.sent)).scalar_one()
    return pending == 0 and unsent == 0


def claim_rows(stack, address: str) -> list[tuple[str, int | None]]:
    with stack.db() as conn:
        return [tuple(row) for row in conn.execute(
            sa.text("SELECT claim.state, claim.code_id FROM claim "
                    "JOIN creator ON creator.id = claim.creator_id "
                    "WHERE creator.email = :email"), {"email": address})]


def redemption_rows(stack, address: str) -> list[tuple[str, int]]:
    """(status, attempts) of the redemption mails owed to ``address``."""
    with stack.db() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(OutboundEmail.status, OutboundEmail.attempts)
            .where(OutboundEmail.kind == MailKind.redemption, OutboundEmail.to_email == address))]


def check_code_mail(stack, address: str, codes: list[str]) -> str:
    """The one redemption mail to ``address``: a code we imported, with its redeem link."""
    mail = stack.mail.wait_for_mail(address, "code", timeout=20)[0]
    code = redemption_code(mail)
    assert code in codes
    link = REDEEM_URL.format(code=code)
    assert link in text_body(mail)
    assert f'href="{link}"' in html_body(mail) or link in html_body(mail)
    assert mail["From"] == "Wellness Perks <perks@example.com>"
    return code


# --------------------------------------------------------------------------- the test


def test_sign_in_claim_allocate_mail_and_waitlist(stack, tmp_path):
    creators = ["ayesha@example.com", "bilal@example.com", "chidi@example.com"]
    codes = [f"HS-{secrets.token_hex(3).upper()}-{secrets.token_hex(3).upper()}"
             for _ in range(2)]
    set_up_program(stack, tmp_path, creators, codes)
    assert stack.quota(SLUG) | {"claims": None} == {
        "program": SLUG, "name": "Headspace · 6 months", "quota": 10, "allocated": 0,
        "remaining": 10, "in_stock": 2, "claims": None, "countries": {}}
    links = []

    # First creator: sign in by mail, claim, the worker allocates and mails the code.
    first, link = sign_in(stack, creators[0])
    links.append(link)
    state, page, token = claim_and_wait(stack, first)
    assert state == "Allocated"
    first_code = check_code_mail(stack, creators[0], codes)
    assert PAGE_CODE_RE.search(page.text).group(1) == first_code
    assert REDEEM_URL.format(code=first_code) in page.text

    # Claiming again changes nothing: no second claim, allocation or mail.
    claim(stack, first, token)
    wait_for(lambda: quiescent(stack), timeout=20, what="the worker to finish its work")
    rows = claim_rows(stack, creators[0])
    assert len(rows) == 1 and rows[0][0] == "allocated" and rows[0][1] is not None
    assert redemption_rows(stack, creators[0]) == [("sent", 1)]
    assert len(stack.mail.to(creators[0], "code")) == 1
    assert PAGE_CODE_RE.search(program_page(stack, first).text).group(1) == first_code
    summary = stack.quota(SLUG)
    assert (summary["allocated"], summary["remaining"], summary["in_stock"]) == (1, 9, 1)
    assert summary["claims"] == {"pending": 0, "allocated": 1, "waitlisted": 0, "refused": 0}

    # Second creator gets the other code, though the SMTP server first says "try later": the
    # mail is retried (MAIL_RETRY_BASE_SECONDS=1: the sweeper sends it once due) instead of
    # dropped.
    second, link = sign_in(stack, creators[1])
    links.append(link)
    stack.mail.refuse_next(1)
    state, page, _ = claim_and_wait(stack, second)
    assert state == "Allocated"
    second_code = check_code_mail(stack, creators[1], codes)
    assert stack.mail.refused == 1
    assert second_code != first_code and {first_code, second_code} == set(codes)
    assert PAGE_CODE_RE.search(page.text).group(1) == second_code

    # Third creator: stock is empty (quota is not), so waitlisted, first in line, no code.
    third, link = sign_in(stack, creators[2])
    links.append(link)
    state, page, _ = claim_and_wait(stack, third)
    assert state == "Waitlisted"
    assert "number <strong>1</strong> on the waitlist" in page.text
    assert not any(code in page.text for code in codes)

    wait_for(lambda: quiescent(stack), timeout=20, what="the worker to finish its work")
    summary = stack.quota(SLUG)
    assert (summary["allocated"], summary["remaining"], summary["in_stock"]) == (2, 8, 0)
    assert summary["claims"] == {"pending": 0, "allocated": 2, "waitlisted": 1, "refused": 0}
    assert [state for state, _ in claim_rows(stack, creators[2])] == ["waitlisted"]
    assert redemption_rows(stack, creators[1]) == [("sent", 2)]
    assert redemption_rows(stack, creators[2]) == []
    # Every mail sent exactly once: one sign-in each, one code mail per allocation.
    for address in creators:
        assert len(stack.mail.to(address, "sign-in")) == 1
    assert [len(stack.mail.to(address, "code")) for address in creators] == [1, 1, 0]
    assert len(stack.mail.messages) == 5
    assert PAGE_CODE_RE.search(program_page(stack, first).text).group(1) == first_code

    # Each task message was delivered once (no message reached more than one queue): three
    # sign-in requests were decided by the worker and their mails went as single sends; the
    # claims' allocations were coalesced into program-wide tasks, their mails into batch
    # sends, and the sweeper handed the refused code mail to a batch send once its retry was
    # due (twice, at most, should a sweep run before the first such send took it).
    received = RECEIVED_RE.findall(stack.services["celery"].output())
    task_ids = [task_id for _name, task_id in received]
    assert len(task_ids) == len(set(task_ids)), received
    names = [name for name, _id in received]
    assert names.count("request_sign_in") == 3, names
    assert names.count("send_email") == 3, names
    assert 1 <= names.count("allocate_program") <= 4, names  # 3 claims and 1 import
    assert 3 <= names.count("send_emails") <= 2 + 2, names   # 2 allocations, 1-2 retries
    assert set(names) <= {"request_sign_in", "send_email", "allocate_program", "send_emails",
                          "sweep"}, names

    # Codes and sign-in tokens are secrets: the processes logged the work, never them.
    logs = {name: service.output() for name, service in stack.services.items()}
    assert "event=claim.requested" in logs["gunicorn"]
    assert "event=allocation.batch" in logs["celery"] and "event=mail.sent" in logs["celery"]
    hidden = {f"code {i + 1}": code for i, code in enumerate(codes)}
    hidden |= {f"sign-in token {i + 1}": link.rsplit("/", 1)[1] for i, link in enumerate(links)}
    leaks = [f"{label} in the {name} output" for name, text in logs.items()
             for label, value in hidden.items() if value in text]
    assert leaks == []
