"""Sign-in and sessions attacked through the deployed processes: gunicorn with two workers, a
Celery worker on Redis, PostgreSQL, mail over SMTP.

A hundred sign-in requests for one address send at most the limit's mails (counted at the SMTP
server and in the outbox) whichever gunicorn worker answers, the rest 429; fetching a link (HEAD,
GET) uses nothing up, its button signs in once, an older link is superseded; a copied session
cookie stops working the moment its creator signs out.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urljoin

import pytest
import requests
import sqlalchemy as sa

from harness.waiting import wait_for
from tests.helpers import csrf_token, sign_in_link
from tests.integration.conftest import (
    _claim_redis_database,
    _release_redis,
    _worker_pings,
    require_stack_services,
    running_stack,
)
from wellness_perks.models import MailKind, OutboundEmail

pytestmark = pytest.mark.integration

SLUG = "headspace-6m"
CREATORS = [f"creator{i}@example.com" for i in range(1, 6)]
HTTP_TIMEOUT = 30


@pytest.fixture(scope="module")
def stack(mail_catcher, tmp_path_factory):
    """The deployment with its default limits, but room for this module's sign-in requests
    from one client address (every request here comes from 127.0.0.1)."""
    require_stack_services()
    broker_url, redis_client = _claim_redis_database()
    tmp = tmp_path_factory.mktemp("sign-in")
    try:
        with running_stack(mail_catcher, tmp, broker_url=broker_url,
                           settings={"RATELIMIT_SIGN_IN_PER_IP": "1000 per 15 minutes"}) as st:
            worker = st.start_worker("celery", 2, wait=False)
            wait_for(lambda: worker.ensure_running() or _worker_pings(st.env), timeout=30,
                     interval=0.2, what="the Celery worker to answer `celery inspect ping`")
            creators_csv = tmp / "creators.csv"
            creators_csv.write_text("handle,email,country\n" + "".join(
                f"@{a.split('@')[0]},{a},PK\n" for a in CREATORS))
            st.cli("init-db")
            st.cli("create-program", "--slug", SLUG, "--name", "Headspace · 6 months",
                   "--quota", "10")
            st.cli("import-creators", SLUG, str(creators_csv))
            yield st
    finally:
        _release_redis(redis_client)


def _ask(stack, http: requests.Session, address: str, token: str) -> requests.Response:
    return http.post(stack.url("/login"), data={"email": address, "csrf_token": token},
                     allow_redirects=False, timeout=HTTP_TIMEOUT)


def _sign_in_rows(stack, address: str) -> int:
    with stack.db() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(OutboundEmail).where(
            OutboundEmail.to_email == address,
            OutboundEmail.kind == MailKind.sign_in)).scalar_one()


def _new_link(stack, http: requests.Session, address: str) -> str:
    before = len(stack.mail.to(address, "sign-in"))
    page = http.get(stack.url("/login"), timeout=HTTP_TIMEOUT)
    assert _ask(stack, http, address, csrf_token(page.text)).status_code == 302
    return sign_in_link(stack.mail.wait_for_mail(address, "sign-in", count=before + 1)[-1])


def test_a_hundred_sign_in_requests_for_one_address_send_three_mails(stack):
    address = CREATORS[0]
    browsers = [requests.Session() for _ in range(8)]
    tokens = [csrf_token(b.get(stack.url("/login"), timeout=HTTP_TIMEOUT).text)
              for b in browsers]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _ask(stack, browsers[i % 8], address, tokens[i % 8]),
                                range(100)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [302] * 3 + [429] * 97
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["Retry-After"].isdigit()
    assert "Too many sign-in requests" in refused.text
    assert len(stack.mail.wait_for_mail(address, "sign-in", count=3)) == 3
    # Only the three accepted requests were queued: the outbox holds three, the server got three.
    assert _sign_in_rows(stack, address) == 3
    assert len(stack.mail.to(address, "sign-in")) == 3


def test_fetching_a_link_uses_nothing_up_and_its_button_signs_in_once(stack):
    address = CREATORS[1]
    http = requests.Session()
    link = _new_link(stack, http, address)
    scanner = requests.Session()
    for _ in range(2):
        assert scanner.head(link, allow_redirects=False, timeout=HTTP_TIMEOUT).status_code == 200
        page = scanner.get(link, allow_redirects=False, timeout=HTTP_TIMEOUT)
        assert page.status_code == 200 and "Sign in as c***@example.com" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert scanner.get(stack.url("/"), allow_redirects=False,
                       timeout=HTTP_TIMEOUT).status_code == 302  # looking signed nobody in

    button = http.get(link, timeout=HTTP_TIMEOUT)
    answer = http.post(link, data={"csrf_token": csrf_token(button.text)},
                       allow_redirects=False, timeout=HTTP_TIMEOUT)
    assert answer.status_code == 302
    assert urljoin(stack.base_url, answer.headers["Location"]) == stack.url("/")
    assert http.get(stack.url("/"), timeout=HTTP_TIMEOUT).status_code == 200

    replay = scanner.post(link, data={"csrf_token": csrf_token(scanner.get(
        stack.url("/login"), timeout=HTTP_TIMEOUT).text)}, allow_redirects=False,
        timeout=HTTP_TIMEOUT)
    assert replay.status_code == 400 and "already been used" in replay.text


def test_an_older_link_is_superseded_by_a_newer_one(stack):
    address = CREATORS[2]
    http = requests.Session()
    older = _new_link(stack, http, address)
    newer = _new_link(stack, http, address)
    page = http.get(older, timeout=HTTP_TIMEOUT)
    assert page.status_code == 400 and "A newer sign-in link was sent" in page.text
    button = http.get(newer, timeout=HTTP_TIMEOUT)
    assert http.post(newer, data={"csrf_token": csrf_token(button.text)},
                     allow_redirects=False, timeout=HTTP_TIMEOUT).status_code == 302


def test_a_copied_cookie_stops_working_at_sign_out_on_every_web_worker(stack):
    signed_in = stack.sign_in([CREATORS[3]], path="/")[CREATORS[3]]
    thief = requests.Session()
    thief.cookies.update(signed_in.http.cookies)
    for _ in range(4):  # whichever gunicorn worker answers
        assert thief.get(stack.url("/"), allow_redirects=False,
                         timeout=HTTP_TIMEOUT).status_code == 200
    assert signed_in.http.post(stack.url("/logout"), data={"csrf_token": signed_in.csrf_token},
                               allow_redirects=False, timeout=HTTP_TIMEOUT).status_code == 302
    for _ in range(4):
        response = thief.get(stack.url(f"/programs/{SLUG}"), allow_redirects=False,
                             timeout=HTTP_TIMEOUT)
        assert response.status_code == 302 and "/login" in response.headers["Location"]
