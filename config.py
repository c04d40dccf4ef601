"""Every setting of wellness-perks, read from the environment in one place.

Nothing else in the project reads ``os.environ``: the app factory, the CLI, the Celery worker
and the tests all take their settings from :class:`Config` (or a mapping that overrides it).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _env_number(name: str, default, kind=int):
    raw = _env(name)
    if raw is None:
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        what = "a whole number" if kind is int else "a number"
        raise RuntimeError(f"environment variable {name} must be {what}, got {raw!r}") from exc


def _env_int(name: str, default: int) -> int:
    return _env_number(name, default, int)


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float)


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    return raw.lower() in {"1", "true", "yes", "on"}


def normalise_database_url(url: str) -> str:
    """Accept both ``postgresql://`` and ``postgresql+psycopg://``; we always drive psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


MAKE_A_CODE_KEY = ('python -c "from cryptography.fernet import Fernet;'
                   'print(Fernet.generate_key().decode())"')


def _generated_once(key_file: Path, make) -> str:
    """A key of this install kept in ``key_file``, made by ``make()`` the first time: every
    process that starts together on a fresh install reads the same key. It is written whole to
    a file of its own (mode 0600) and then linked to its name, which fails if another process
    linked its key first: the name only ever holds a complete key, the first."""
    if not key_file.exists():
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=key_file.parent, prefix=f".{key_file.name}-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(make() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, key_file)
            except FileExistsError:
                pass  # another process made the key first: theirs is the install's
        finally:
            os.unlink(tmp)
    return key_file.read_text().strip()


def _code_encryption_key(given: str | None, instance_path: Path, database_url: str) -> str:
    """CODE_ENCRYPTION_KEY: one or more Fernet keys, comma-separated, newest first.

    The embedded default (SQLite) makes a development key in instance/; a production database
    (PostgreSQL) never runs on a key nobody chose and kept: without one the process stops.
    """
    keys = given or _env("CODE_ENCRYPTION_KEY")
    where = "CODE_ENCRYPTION_KEY"
    if not keys:
        if database_url.startswith("postgresql"):
            raise RuntimeError(
                "CODE_ENCRYPTION_KEY is not set: codes are stored encrypted, and a PostgreSQL "
                "database needs a key that is kept safe outside it (lose it and the codes are "
                f"lost). Make one with: {MAKE_A_CODE_KEY}")
        from cryptography.fernet import Fernet

        key_file = instance_path / "code_encryption_key"
        keys = _generated_once(key_file, lambda: Fernet.generate_key().decode())
        where = str(key_file)
    return check_code_keys(keys, where)


def check_code_keys(keys: str, where: str) -> str:
    """Each comma-separated part must be a Fernet key (32 bytes, URL-safe base64); the message
    names which part, never the key."""
    from cryptography.fernet import Fernet

    parts = [part.strip() for part in keys.split(",")]
    for number, part in enumerate(parts, start=1):
        try:
            Fernet(part)
        except ValueError:
            raise RuntimeError(
                f"{where}: key {number} of {len(parts)} is not a Fernet key (32 bytes, URL-safe "
                f"base64, newest first, comma-separated); make one with: {MAKE_A_CODE_KEY}"
            ) from None
    return ",".join(parts)


# Sessions and sign-in links are signed with SECRET_KEY: a short one can be guessed offline
# from a single signed cookie.
MIN_SECRET_KEY_BYTES = 32
MAKE_A_KEY = 'python -c "import secrets;print(secrets.token_urlsafe(48))"'


def _secret_key(instance_path: Path) -> str:
    """SECRET_KEY from the environment; for a first run on a bare machine, one kept in instance/."""
    key = _env("SECRET_KEY")
    if key:
        return key
    return _instance_secret_key(instance_path / "secret_key")


def _instance_secret_key(key_file: Path) -> str:
    """The development key of this install, made once (``_generated_once``)."""
    return _generated_once(key_file, lambda: secrets.token_urlsafe(48))


def check_secret_key(key: str, where: str) -> str:
    """A key too short to sign sessions safely stops the process, saying how to make one."""
    if len(key.encode("utf-8")) < MIN_SECRET_KEY_BYTES:
        raise RuntimeError(
            f"{where} must be at least {MIN_SECRET_KEY_BYTES} bytes long, got "
            f"{len(key.encode('utf-8'))}; make one with: {MAKE_A_KEY}")
    return key


class Config:
    """Settings as attributes, so ``app.config.from_object(Config())`` picks them up.

    ``overrides`` (the tests' settings) win over the environment. The instance folder and the
    secret key are settled first, so an overridden instance folder is where the defaults point
    and a given SECRET_KEY writes no key file.
    """

    def __init__(self, overrides: dict | None = None) -> None:
        overrides = dict(overrides or {})
        default_instance = str(PROJECT_ROOT / "instance")
        self.INSTANCE_PATH = str(Path(overrides.pop("INSTANCE_PATH", None)
                                      or _env("INSTANCE_PATH", default_instance)).resolve())
        instance = Path(self.INSTANCE_PATH)
        self.PORT = _env_int("PORT", 5000)
        given_key = overrides.pop("SECRET_KEY", None)
        self.SECRET_KEY = check_secret_key(
            given_key or _secret_key(instance),
            "SECRET_KEY" if given_key or _env("SECRET_KEY") else str(instance / "secret_key"))
        given_code_key = overrides.pop("CODE_ENCRYPTION_KEY", None)
        self.DATABASE_URL = normalise_database_url(
            _env("DATABASE_URL", f"sqlite:///{instance / 'wellness_perks.db'}")
        )
        # Connections each process keeps open to PostgreSQL: at least the threads that serve
        # requests at once (gunicorn --threads), or connections are opened and closed per request.
        self.DATABASE_POOL_SIZE = _env_int("DATABASE_POOL_SIZE", 10)
        # Empty broker URL: Celery runs tasks in-process (eager), the embedded default.
        self.CELERY_BROKER_URL = _env("CELERY_BROKER_URL", "")
        # After a failed publish, skip publishing this long (the sweeper picks up the rows).
        self.BROKER_RETRY_AFTER_SECONDS = _env_int("BROKER_RETRY_AFTER_SECONDS", 15)
        # CPU niceness of Celery workers (0-19). On a machine that also serves the web, 10 lets
        # a claim burst take the CPU first; allocation and mail catch up as it ebbs.
        self.WORKER_NICENESS = _env_int("WORKER_NICENESS", 0)
        if not 0 <= self.WORKER_NICENESS <= 19:
            raise RuntimeError("environment variable WORKER_NICENESS must be from 0 (as the "
                               f"web) to 19 (lowest priority), got {self.WORKER_NICENESS}")
        # Waiting claims served per allocation transaction (one program lock per batch).
        self.ALLOCATION_BATCH_SIZE = _env_int("ALLOCATION_BATCH_SIZE", 200)
        # The sweeper: how often it runs (beat), and when work counts as lost.
        self.SWEEP_INTERVAL_SECONDS = _env_int("SWEEP_INTERVAL_SECONDS", 30)
        self.SWEEP_PENDING_AFTER_SECONDS = _env_int("SWEEP_PENDING_AFTER_SECONDS", 60)
        # A mail batch's lease: renewed every third of it while its worker lives; the sweeper
        # takes back a batch whose lease ran out (its worker died or lost the database).
        self.MAIL_SENDING_TIMEOUT_SECONDS = _env_float("MAIL_SENDING_TIMEOUT_SECONDS", 20.0)
        # How long a worker keeps trying to record what became of a message the SMTP server
        # answered, while the database is away, before it gives up (the message is then
        # marked possibly sent when its lease is taken over).
        self.MAIL_RECORD_RETRY_SECONDS = _env_float("MAIL_RECORD_RETRY_SECONDS", 300.0)
        # Health: a claim pending, or a mail due, longer than this makes the system "degraded".
        self.HEALTH_GRACE_SECONDS = _env_int("HEALTH_GRACE_SECONDS", 120)
        # The bearer token that shows operators the details of /healthz and /metrics. Empty:
        # only a request from this machine that came through no proxy sees them.
        self.OPS_TOKEN = _env("OPS_TOKEN", "")
        if self.OPS_TOKEN and len(self.OPS_TOKEN) < 16:
            raise RuntimeError("environment variable OPS_TOKEN must be at least 16 characters "
                               "(make one with: python3 -c 'import secrets; "
                               "print(secrets.token_urlsafe(32))')")
        self.BASE_URL = _env("BASE_URL", f"http://127.0.0.1:{self.PORT}").rstrip("/")
        # Mail: SMTP when SMTP_HOST is set, otherwise RFC 5322 files in OUTBOX_DIR.
        self.SMTP_HOST = _env("SMTP_HOST", "")
        self.SMTP_PORT = _env_int("SMTP_PORT", 25)
        self.SMTP_USER = _env("SMTP_USER", "")
        self.SMTP_PASSWORD = _env("SMTP_PASSWORD", "")
        self.SMTP_STARTTLS = _env_bool("SMTP_STARTTLS", False)
        self.SMTP_SSL = _env_bool("SMTP_SSL", False)
        self.SMTP_TIMEOUT = _env_int("SMTP_TIMEOUT", 20)
        # TLS verifies the server's certificate and name: with the system's CAs, or this file's.
        self.SMTP_CA_FILE = _env("SMTP_CA_FILE", "")
        # The SMTP password only goes over an encrypted connection, unless this says otherwise.
        self.SMTP_ALLOW_PLAINTEXT_AUTH = _env_bool("SMTP_ALLOW_PLAINTEXT_AUTH", False)
        self.MAIL_FROM = _env("MAIL_FROM", "Wellness Perks <perks@localhost>")
        # A mail refused for a reason that may pass is retried with exponential backoff (from
        # the base, each wait capped) until the waits span the window; then it is failed.
        self.MAIL_RETRY_BASE_SECONDS = _env_int("MAIL_RETRY_BASE_SECONDS", 30)
        self.MAIL_RETRY_MAX_DELAY_SECONDS = _env_int("MAIL_RETRY_MAX_DELAY_SECONDS", 3600)
        self.MAIL_RETRY_WINDOW_SECONDS = _env_int("MAIL_RETRY_WINDOW_SECONDS", 24 * 3600)
        # Messages a second each sending process may send (0: as fast as the server takes them).
        self.MAIL_RATE_LIMIT = _env_float("MAIL_RATE_LIMIT", 0.0)
        # A claim's code mail is sent again on a manager's request (`resend`) only if none was
        # queued for the claim in the last this many minutes.
        self.RESEND_MIN_INTERVAL_MINUTES = _env_int("RESEND_MIN_INTERVAL_MINUTES", 10)
        if self.RESEND_MIN_INTERVAL_MINUTES < 0:
            raise RuntimeError("environment variable RESEND_MIN_INTERVAL_MINUTES must be 0 or "
                               f"more, got {self.RESEND_MIN_INTERVAL_MINUTES}")
        # An invitation's reminder goes to those who have not claimed this many days after it.
        self.INVITE_REMINDER_DAYS = _env_int("INVITE_REMINDER_DAYS", 3)
        if self.INVITE_REMINDER_DAYS < 0:
            raise RuntimeError("environment variable INVITE_REMINDER_DAYS must be 0 or more, "
                               f"got {self.INVITE_REMINDER_DAYS}")
        # Mails per send task (one SMTP connection carries a batch).
        self.MAIL_BATCH_SIZE = _env_int("MAIL_BATCH_SIZE", 50)
        self.OUTBOX_DIR = _env("OUTBOX_DIR", str(instance / "outbox"))
        self.HELP_EMAIL = _env("HELP_EMAIL", "help@localhost")
        self.LOGIN_TOKEN_MAX_AGE = _env_int("LOGIN_TOKEN_MAX_AGE", 15 * 60)
        # The sign-in link of an invitation or reminder mail works (once) for this many seconds.
        self.INVITE_LINK_MAX_AGE = _env_int("INVITE_LINK_MAX_AGE", 7 * 24 * 3600)
        if self.INVITE_LINK_MAX_AGE < 60:
            raise RuntimeError("environment variable INVITE_LINK_MAX_AGE must be 60 (seconds) "
                               f"or more, got {self.INVITE_LINK_MAX_AGE}")
        # The largest request body taken, in bytes; a larger one is answered 413 unread.
        self.MAX_CONTENT_LENGTH = _env_int("MAX_CONTENT_LENGTH", 64 * 1024)
        # The same for the console's uploads of codes and eligibility lists (a million codes
        # are about 15 MB), taken from a manager's session only.
        self.MAX_UPLOAD_BYTES = _env_int("MAX_UPLOAD_BYTES", 32 * 1024 * 1024)
        # Where uploads wait between their report and their commit (random names, mode 0600),
        # and how long a report waits for its commit before its file is deleted.
        self.UPLOAD_DIR = _env("UPLOAD_DIR", str(instance / "uploads"))
        self.UPLOAD_STAGED_MINUTES = _env_int("UPLOAD_STAGED_MINUTES", 60)
        # A committed upload of at least this many rows is imported by a task on the
        # ``imports`` queue, with a progress bar; a smaller one in the request.
        self.IMPORT_IN_BACKGROUND_ROWS = _env_int("IMPORT_IN_BACKGROUND_ROWS", 100_000)
        # A running import's heartbeat (written with its progress): the sweeper runs a job
        # again from its file once its heartbeat is this old (its worker died), and gives it
        # up (failed, ``import_interrupted``) once it has been started this many times.
        self.IMPORT_STALE_AFTER_SECONDS = _env_int("IMPORT_STALE_AFTER_SECONDS", 300)
        self.IMPORT_MAX_ATTEMPTS = _env_int("IMPORT_MAX_ATTEMPTS", 3)
        if self.IMPORT_MAX_ATTEMPTS < 1 or self.IMPORT_STALE_AFTER_SECONDS < 1:
            raise RuntimeError("environment variables IMPORT_MAX_ATTEMPTS and "
                               "IMPORT_STALE_AFTER_SECONDS must be at least 1")
        # How often, at most, a running import writes how far it got, and so its heartbeat: a
        # livelier progress bar against more (short) writes; under half the staleness above,
        # or a live import would be taken for a dead one.
        self.IMPORT_PROGRESS_SECONDS = _env_float("IMPORT_PROGRESS_SECONDS", 1.0)
        if not 0 < self.IMPORT_PROGRESS_SECONDS < self.IMPORT_STALE_AFTER_SECONDS / 2:
            raise RuntimeError(
                "environment variable IMPORT_PROGRESS_SECONDS must be more than 0 and less than "
                f"half of IMPORT_STALE_AFTER_SECONDS ({self.IMPORT_STALE_AFTER_SECONDS}), got "
                f"{self.IMPORT_PROGRESS_SECONDS:g}")
        # A signed-in session ends after this long without a request, and this long after
        # its sign-in, whatever its use.
        self.SESSION_IDLE_MINUTES = _env_int("SESSION_IDLE_MINUTES", 30)
        self.SESSION_MAX_HOURS = _env_int("SESSION_MAX_HOURS", 12)
        # Abuse limits (web/limits.py), each "N per PERIOD"; counted in Redis when a broker is
        # configured, so that every process shares the counts, in memory otherwise.
        self.RATELIMIT_ENABLED = _env_bool("RATELIMIT_ENABLED", True)
        self.RATELIMIT_STORAGE_URI = _env("RATELIMIT_STORAGE_URI", "")  # empty: see below
        self.RATELIMIT_SIGN_IN_PER_ADDRESS = _env("RATELIMIT_SIGN_IN_PER_ADDRESS",
                                                  "3 per 15 minutes")
        self.RATELIMIT_SIGN_IN_PER_IP = _env("RATELIMIT_SIGN_IN_PER_IP", "100 per 15 minutes")
        self.RATELIMIT_CLAIM_PER_SESSION = _env("RATELIMIT_CLAIM_PER_SESSION", "10 per minute")
        self.RATELIMIT_MANAGER_PASSWORD_FAILURES = _env("RATELIMIT_MANAGER_PASSWORD_FAILURES",
                                                        "5 per 15 minutes")
        self.RATELIMIT_API_TOKEN = _env("RATELIMIT_API_TOKEN", "120 per minute")
        # Proxies in front of the web server whose X-Forwarded-For is believed (the client
        # address the per-address limits count); 0 when clients connect directly.
        self.TRUSTED_PROXY_COUNT = _env_int("TRUSTED_PROXY_COUNT", 0)
        self.LOG_LEVEL = _env("LOG_LEVEL", "INFO")
        self.SESSION_COOKIE_SECURE = self.BASE_URL.startswith("https://")
        self.SESSION_COOKIE_HTTPONLY = True
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.WTF_CSRF_TIME_LIMIT = None  # the token lives as long as the session
        # The key that fingerprints codes (HMAC-SHA256) for uniqueness and look-up. It never
        # changes: empty, it is derived from the oldest key of CODE_ENCRYPTION_KEY, so set it
        # before that key is retired (docs/design.md, "Codes at rest").
        self.CODE_FINGERPRINT_KEY = _env("CODE_FINGERPRINT_KEY", "")
        for key, value in overrides.items():
            setattr(self, key, value)
        self.DATABASE_URL = normalise_database_url(self.DATABASE_URL)
        # Settled last: whether a key may be generated depends on the database it is for.
        self.CODE_ENCRYPTION_KEY = _code_encryption_key(given_code_key, instance,
                                                        self.DATABASE_URL)
        if self.CODE_FINGERPRINT_KEY and len(self.CODE_FINGERPRINT_KEY.encode()) < 32:
            raise RuntimeError("CODE_FINGERPRINT_KEY must be at least 32 bytes long; make one "
                               f"with: {MAKE_A_CODE_KEY}")
        if not self.RATELIMIT_STORAGE_URI:  # the broker's Redis, or this process's memory
            broker_redis = self.CELERY_BROKER_URL.startswith(("redis://", "rediss://"))
            self.RATELIMIT_STORAGE_URI = self.CELERY_BROKER_URL if broker_redis else "memory://"
        _check_smtp_login(self)


def _check_smtp_login(config: Config) -> None:
    """An SMTP password is never sent in clear: a login needs STARTTLS or TLS, or the explicit
    SMTP_ALLOW_PLAINTEXT_AUTH; and a CA file that is not there stops the process at once."""
    if not config.SMTP_HOST:
        return
    if config.SMTP_USER and not (config.SMTP_STARTTLS or config.SMTP_SSL
                                 or config.SMTP_ALLOW_PLAINTEXT_AUTH):
        raise RuntimeError(
            "SMTP_USER is set but the connection to the SMTP server would not be encrypted, "
            "so the password would travel in clear: set SMTP_STARTTLS=1 (or SMTP_SSL=1 for TLS "
            "from the start), or SMTP_ALLOW_PLAINTEXT_AUTH=true for a server on this machine")
    if config.SMTP_CA_FILE and not Path(config.SMTP_CA_FILE).is_file():
        raise RuntimeError(f"SMTP_CA_FILE {config.SMTP_CA_FILE} is not a file")
