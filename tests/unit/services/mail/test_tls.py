"""TLS to the SMTP server, tried as an attacker who stands in for the relay would: real aiosmtpd
servers speaking STARTTLS or TLS from the start, with certificates made here (``cryptography``).

A relay whose certificate is self-signed, or signed by a trusted CA for another name, gets no
password and no message; the mail stays queued for a retry. A relay with a certificate for its
name from the CA named by SMTP_CA_FILE gets both. The password never goes over a connection that
is not encrypted unless SMTP_ALLOW_PLAINTEXT_AUTH says so.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import select

from tests.helpers import free_port
from wellness_perks import create_app
from wellness_perks.db import get_session
from wellness_perks.models import OutboundEmail
from wellness_perks.services import mail

# The surface's own behaviour, the same on both databases: run on SQLite only (the services'
# tests run on both; tests/conftest.py).
pytestmark = pytest.mark.sqlite_only

HOST = "127.0.0.1"
USER, PASSWORD = "perks-relay-user", "relay-password-never-in-clear"


# --------------------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool,
                 names: list[x509.GeneralName]) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = builder.add_extension(
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    """A test CA (its certificate in ``ca_file``) and server certificates, as files."""

    folder: Path
    ca_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))

    def __post_init__(self) -> None:
        self.ca = _certificate("wellness-perks test CA", self.ca_key, _name(
            "wellness-perks test CA"), self.ca_key, ca=True, names=[])
        self.ca_file = self._write("ca.pem", self.ca.public_bytes(serialization.Encoding.PEM))

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def server_context(self, label: str, names: list[x509.GeneralName], *,
                       self_signed: bool = False) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer, issuer_key = (_name(label), key) if self_signed else (self.ca.subject,
                                                                      self.ca_key)
        cert = _certificate(label, key, issuer, issuer_key, ca=False, names=names)
        cert_file = self._write(f"{label}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_file = self._write(f"{label}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        return context


RIGHT_NAME = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
WRONG_NAME = [x509.DNSName("smtp.attacker.example")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


# --------------------------------------------------------------------------- the relays


class Relay:
    """An SMTP relay that takes any login it is offered (as a fake one would) and keeps every
    login and message it got."""

    def __init__(self, *, mode: str, context: ssl.SSLContext | None) -> None:
        self.logins: list[tuple[str, bytes, bytes]] = []
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        parameters = {"authenticator": self._authenticate, "auth_require_tls": False}
        if mode == "starttls":
            parameters["tls_context"] = context
        self.controller = Controller(self, hostname=HOST, port=free_port(), ready_timeout=30,
                                     ssl_context=context if mode == "ssl" else None,
                                     **parameters)

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        with self._lock:
            self.logins.append((mechanism, auth_data.login, auth_data.password))
        return AuthResult(success=True)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        with self._lock:
            self.messages.append(envelope.content)
        return "250 OK"

    @property
    def port(self) -> int:
        return self.controller.port


@pytest.fixture
def relays():
    started: list[Relay] = []

    def start(mode: str, context: ssl.SSLContext | None = None) -> Relay:
        relay = Relay(mode=mode, context=context)
        relay.controller.start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.controller.stop()


def _settings(app_config, relay: Relay, mode: str, **more) -> dict:
    return app_config | {"SMTP_HOST": HOST, "SMTP_PORT": relay.port, "SMTP_USER": USER,
                         "SMTP_PASSWORD": PASSWORD, "SMTP_STARTTLS": mode == "starttls",
                         "SMTP_SSL": mode == "ssl", "SMTP_TIMEOUT": 10} | more


def _send(settings: dict, outbound_ids: list[int]):
    app = create_app(settings)
    try:
        with app.app_context():
            return mail.send_batch(get_session(), outbound_ids=outbound_ids)
    finally:
        mail.close_pools()
        app.extensions["db_engine"].dispose()


def _rows(session, ids):
    session.rollback()
    return session.exec(select(OutboundEmail).where(OutboundEmail.id.in_(ids))
                        .order_by(OutboundEmail.id)).all()


MODES = ["starttls", "ssl"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("forgery", ["self-signed, wrong name", "trusted CA, wrong name",
                                     "self-signed, right name", "untrusted CA, right name"])
def test_a_relay_that_cannot_prove_its_name_gets_no_password_and_no_mail(
        app_config, stocked, session, pki, relays, tmp_path, mode, forgery):
    if forgery == "self-signed, wrong name":
        context = pki.server_context("fake", WRONG_NAME, self_signed=True)
    elif forgery == "trusted CA, wrong name":
        context = pki.server_context("other-host", WRONG_NAME)
    elif forgery == "self-signed, right name":
        context = pki.server_context("fake-right-name", RIGHT_NAME, self_signed=True)
    else:
        context = Pki(tmp_path).server_context("rogue-ca", RIGHT_NAME)
    relay = relays(mode, context)
    outcome = _send(_settings(app_config, relay, mode, SMTP_CA_FILE=str(pki.ca_file)),
                    stocked[:3])
    assert relay.logins == [] and relay.messages == []  # the server never saw AUTH
    assert sorted(outcome.retry) == stocked[:3] and outcome.sent == outcome.failed == []
    for row in _rows(session, stocked[:3]):
        assert row.status == "queued" and row.next_attempt_at is not None  # retried later
        assert "CERTIFICATE_VERIFY_FAILED" in row.last_error
        assert PASSWORD not in row.last_error


@pytest.mark.parametrize("mode", MODES)
def test_a_relay_with_a_certificate_from_the_named_ca_gets_the_login_and_the_mail(
        app_config, stocked, session, pki, relays, mode):
    relay = relays(mode, pki.server_context(f"relay-{mode}", RIGHT_NAME))
    outcome = _send(_settings(app_config, relay, mode, SMTP_CA_FILE=str(pki.ca_file)),
                    stocked[:3])
    assert sorted(outcome.sent) == stocked[:3]
    assert [(login, password) for _mechanism, login, password in relay.logins] == [
        (USER.encode(), PASSWORD.encode())]  # one login: one connection for the batch
    assert len(relay.messages) == 3
    assert [row.status for row in _rows(session, stocked[:3])] == ["sent"] * 3


@pytest.mark.parametrize("mode", MODES)
def test_without_the_ca_file_the_systems_cas_decide(app_config, stocked, pki, relays, mode):
    relay = relays(mode, pki.server_context(f"private-{mode}", RIGHT_NAME))
    outcome = _send(_settings(app_config, relay, mode, SMTP_CA_FILE=""), stocked[:1])
    assert outcome.retry and relay.logins == [] and relay.messages == []


def test_a_certificate_failure_is_retried_until_the_window_ends(
        app_config, stocked, session, pki, relays):
    relay = relays("starttls", pki.server_context("fake-window", WRONG_NAME, self_signed=True))
    settings = _settings(app_config, relay, "starttls", SMTP_CA_FILE=str(pki.ca_file),
                         MAIL_RETRY_BASE_SECONDS=1, MAIL_RETRY_WINDOW_SECONDS=3)
    for _attempt in range(5):
        session.rollback()
        session.execute(OutboundEmail.__table__.update()
                        .where(OutboundEmail.id == stocked[0]).values(next_attempt_at=None))
        session.commit()
        outcome = _send(settings, stocked[:1])
        if outcome.failed:
            break
        assert outcome.retry
    assert outcome.failed == stocked[:1]  # the window of 3 s of waits is spent: failed
    [row] = _rows(session, stocked[:1])
    assert row.status == "failed" and row.attempts > 1 and relay.logins == []


def test_starttls_refused_by_the_server_sends_no_password(app_config, stocked, session,
                                                          relays):
    """A relay (or a man in the middle) that strips STARTTLS from its answer: no fall back."""
    relay = relays("plain")
    outcome = _send(_settings(app_config, relay, "starttls"), stocked[:2])
    assert sorted(outcome.retry) == stocked[:2]
    assert relay.logins == [] and relay.messages == []
    assert all("STARTTLS" in row.last_error for row in _rows(session, stocked[:2]))


def test_a_login_without_encryption_stops_the_process(app_config, relays):
    relay = relays("plain")
    with pytest.raises(RuntimeError, match="SMTP_USER is set but the connection to the SMTP "
                                           "server would not be encrypted") as refused:
        create_app(_settings(app_config, relay, "plain"))
    assert "SMTP_STARTTLS=1" in str(refused.value)
    assert "SMTP_ALLOW_PLAINTEXT_AUTH=true" in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_plaintext_login_only_when_allowed(app_config, stocked, session, relays):
    relay = relays("plain")
    outcome = _send(_settings(app_config, relay, "plain", SMTP_ALLOW_PLAINTEXT_AUTH=True),
                    stocked[:1])
    assert outcome.sent == stocked[:1] and len(relay.logins) == 1


def test_the_transport_itself_never_logs_in_over_plain_text(app_config, stocked, session,
                                                             relays):
    """Even with the settings' check bypassed, the transport refuses to log in in clear."""
    relay = relays("plain")
    app = create_app(_settings(app_config, relay, "starttls"))
    app.config["SMTP_STARTTLS"] = False
    try:
        with app.app_context():
            outcome = mail.send_batch(get_session(), outbound_ids=stocked[:1])
    finally:
        mail.close_pools()
        app.extensions["db_engine"].dispose()
    assert outcome.retry and relay.logins == [] and relay.messages == []
    [row] = _rows(session, stocked[:1])
    assert row.last_error.startswith("PlaintextAuthRefused: SMTP_USER is set")


def test_without_a_login_plain_smtp_is_still_allowed(app_config, stocked, relays):
    relay = relays("plain")
    settings = _settings(app_config, relay, "plain") | {"SMTP_USER": "", "SMTP_PASSWORD": ""}
    assert _send(settings, stocked[:1]).sent == stocked[:1]
    assert relay.logins == [] and len(relay.messages) == 1


def test_a_ca_file_that_is_not_there_stops_the_process(app_config, tmp_path):
    with pytest.raises(RuntimeError, match="SMTP_CA_FILE .*missing.pem is not a file"):
        create_app(app_config | {"SMTP_CA_FILE": str(tmp_path / "missing.pem")})
