"""The tables of wellness-perks (SQLModel on SQLAlchemy 2), and the stable codes they hold.

The schema itself is owned by Alembic (``migrations/``); these classes describe it for the ORM.
States, reasons and languages are stored as the codes below, never as words: templates and mail
rendering turn them into words in the reader's language.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python, on PostgreSQL and on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is expected")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(*, nullable: bool = True, **kwargs) -> sa.Column:
    return sa.Column(UTCDateTime(), nullable=nullable, **kwargs)


class ClaimState(enum.StrEnum):
    pending = "pending"
    allocated = "allocated"
    waitlisted = "waitlisted"
    refused = "refused"


class ClaimReason(enum.StrEnum):
    """Why a claim waits (``waitlisted``) or was turned down (``refused``)."""

    not_eligible = "not_eligible"                    # refused: not on the program's list
    window_closed = "window_closed"                  # refused: claimed after the window closed
    quota_reached = "quota_reached"                  # waits: the program's quota is full
    country_quota_reached = "country_quota_reached"  # waits: the creator's country is full
    out_of_stock = "out_of_stock"                    # waits: no code in stock
    removed_from_list = "removed_from_list"          # refused: taken off the list while waiting


class WindowState(enum.StrEnum):
    not_open = "not_open"
    open = "open"
    paused = "paused"  # a manager paused claiming: claims are refused until they resume it
    closed = "closed"


class CodeStatus(enum.StrEnum):
    available = "available"
    assigned = "assigned"
    void = "void"


class MailStatus(enum.StrEnum):
    queued = "queued"      # waiting for its first (or next) attempt
    sending = "sending"    # an attempt holds it
    sent = "sent"
    failed = "failed"      # refused for good, or retried for MAIL_RETRY_WINDOW_SECONDS
    cancelled = "cancelled"  # its code was voided before it went out (a reissue mail follows)


class MailProblem(enum.StrEnum):
    """What the outbox itself records as a mail's ``last_error`` (a transport's errors are
    recorded as the exception says them)."""

    code_voided = "code_voided"  # cancelled: its code was voided before it was sent
    interrupted = "interrupted"  # its attempt was cut off mid-send (its worker stopped)
    recipient_forgotten = "recipient_forgotten"  # failed: its creator asked to be forgotten
    # cancelled: an invitation or reminder whose creator claimed, or opted out, before it went
    no_longer_wanted = "no_longer_wanted"


class MailKind(enum.StrEnum):
    sign_in = "sign_in"
    redemption = "redemption"   # the first code of a claim
    reissue = "reissue"         # a replacement code, after the first was voided
    invitation = "invitation"   # to a creator on a program's list who has not claimed
    reminder = "reminder"       # the one reminder of an invitation still not claimed


# The languages pages and mails are rendered in (ISO 639-1); a creator reads in their own.
DEFAULT_LOCALE = "en"
SUPPORTED_LOCALES = ("en",)
RIGHT_TO_LEFT_LOCALES = frozenset({"ur"})


def text_direction(locale: str) -> str:
    """``rtl`` for a language written right to left (Urdu), else ``ltr``."""
    return "rtl" if locale in RIGHT_TO_LEFT_LOCALES else "ltr"


DEFAULT_CODE_PATTERN = r"[A-Za-z0-9-]{4,64}"
# The predicate of the partial index of the waiting line.
WAITING = "state IN ('pending', 'waitlisted')"
# The predicate of the partial index of the mails not sent (nor cancelled): the outbox sends
# and forgets, so it holds few rows however many mails went out.
UNDELIVERED = "status IN ('queued', 'sending', 'failed')"


def window_state(opens_at: datetime | None, closes_at: datetime | None,
                 now: datetime, paused_at: datetime | None = None) -> WindowState:
    """The state of a claim window at ``now`` (either end may be open). A closed window is
    closed, paused or not; a paused one is paused whether or not it has opened yet."""
    if closes_at is not None and now >= closes_at:
        return WindowState.closed
    if paused_at is not None:
        return WindowState.paused
    if opens_at is not None and now < opens_at:
        return WindowState.not_open
    if closes_at is not None and now >= closes_at:
        return WindowState.closed
    return WindowState.open


class Program(SQLModel, table=True):
    __table_args__ = (
        # I2 held by the database too: the counter can never pass the quota.
        sa.CheckConstraint("allocated_count <= quota", name="ck_program_quota_room"),
        sa.CheckConstraint("quota >= 0", name="ck_program_quota_positive"),
        sa.CheckConstraint("in_stock_count >= 0", name="ck_program_stock_positive"),
    )

    id: int | None = Field(default=None, primary_key=True)
    slug: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    perk_months: int = Field(default=6, nullable=False)
    quota: int = Field(nullable=False)
    # Codes handed out so far. Allocation raises it with a conditional UPDATE
    # (allocated_count < quota), which is what keeps the quota exact under concurrency.
    allocated_count: int = Field(default=0, nullable=False)
    # Codes in stock (status available), so that the stock number costs one row read however
    # many codes there are. Moved in the transaction of every change of stock, under the
    # program's row lock: raised by an import, lowered with allocated_count by allocation, by
    # voiding a code in stock and by a reissue, raised by a restore. ``verify`` checks it (I2).
    in_stock_count: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    opens_at: datetime | None = Field(default=None, sa_column=_ts())
    closes_at: datetime | None = Field(default=None, sa_column=_ts())
    # The IANA zone the window was set in (``Asia/Karachi``): the instants above are UTC, and
    # the console shows them back in this zone.
    time_zone: str = Field(default="UTC", sa_column=sa.Column(
        sa.String(64), nullable=False, server_default="UTC"))
    # Set while a manager has paused claiming (new claims are refused with ``claims_paused``).
    claims_paused_at: datetime | None = Field(default=None, sa_column=_ts())
    # Where creators write with questions: the program page and the code mail's footer
    # (HELP_EMAIL when none is set).
    support_email: str | None = Field(default=None, sa_column=sa.Column(sa.String(320)))
    redeem_url: str | None = Field(default=None, sa_column=sa.Column(sa.String(500)))
    code_pattern: str = Field(
        default=DEFAULT_CODE_PATTERN, sa_column=sa.Column(sa.String(500), nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))

    def redeem_link(self, code: str) -> str | None:
        if not self.redeem_url:
            return None
        from urllib.parse import quote

        return self.redeem_url.replace("{code}", quote(code, safe=""))

    def window_state(self, now: datetime) -> WindowState:
        return window_state(self.opens_at, self.closes_at, now, self.claims_paused_at)

    def in_own_zone(self, value: datetime) -> datetime:
        """An instant as the clocks of the program's time zone show it."""
        from zoneinfo import ZoneInfo

        return value.astimezone(ZoneInfo(self.time_zone))


class CountryQuota(SQLModel, table=True):
    """An optional cap on a program's allocations to creators of one country."""

    __table_args__ = (
        sa.UniqueConstraint("program_id", "country", name="uq_country_quota"),
        sa.CheckConstraint("allocated_count <= quota", name="ck_country_quota_room"),
        sa.CheckConstraint("quota >= 0", name="ck_country_quota_positive"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", nullable=False)
    country: str = Field(sa_column=sa.Column(sa.String(2), nullable=False))
    quota: int = Field(nullable=False)
    allocated_count: int = Field(default=0, nullable=False)


class Creator(SQLModel, table=True):
    # The console's search by handle prefix is an index range, never a scan of all creators.
    __table_args__ = (sa.Index("ix_creator_handle", "handle"),)

    id: int | None = Field(default=None, primary_key=True)
    # Normalised (email-validator) and lower-cased: the identity of a person.
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False, unique=True))
    handle: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    name: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    country: str = Field(sa_column=sa.Column(sa.String(2), nullable=False))
    # The language they read pages and mails in (one of SUPPORTED_LOCALES).
    locale: str = Field(default=DEFAULT_LOCALE, sa_column=sa.Column(
        sa.String(8), nullable=False, server_default=DEFAULT_LOCALE))
    # The number of their newest sign-in link: bumped when a link is asked for and when one
    # is used. A link carries the value it was minted with, so only the newest works, once.
    login_nonce: int = Field(default=0, nullable=False)
    # The number of the link they last signed in with (None: never): tells a used link from
    # one superseded by a newer link.
    login_used_nonce: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    # Named by every session of theirs; bumped at sign-out and when they are forgotten, which
    # ends every session at once (a copied cookie included).
    session_version: int = Field(default=0, sa_column=sa.Column(
        sa.Integer, nullable=False, server_default="0"))
    last_login_at: datetime | None = Field(default=None, sa_column=_ts())
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Eligibility(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("program_id", "creator_id", name="uq_eligibility"),)

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", nullable=False)
    creator_id: int = Field(foreign_key="creator.id", nullable=False, index=True)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class ManagerRole(enum.StrEnum):
    """What a manager may do, each role including the ones before it."""

    viewer = "viewer"  # reads dashboards and reports
    manager = "manager"  # runs programs: uploads, creators, resends, reissues
    admin = "admin"  # also creates programs, managers and API tokens


MANAGER_ROLES: tuple[str, ...] = tuple(role.value for role in ManagerRole)


def role_includes(role: str, needed: str) -> bool:
    """Whether ``role`` includes ``needed`` (viewer < manager < admin): the one check of a
    console session's role and of an API token's."""
    return MANAGER_ROLES.index(role) >= MANAGER_ROLES.index(needed)


class Manager(SQLModel, table=True):
    __table_args__ = (
        sa.CheckConstraint("role IN ('viewer', 'manager', 'admin')", name="ck_manager_role"),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False, unique=True))
    password_hash: str = Field(sa_column=sa.Column(sa.String(300), nullable=False))
    role: str = Field(default=ManagerRole.manager.value, sa_column=sa.Column(
        sa.String(16), nullable=False, server_default=ManagerRole.manager.value))
    # Named by every session of theirs; bumped at sign-out (and when an admin disables them),
    # which ends every session at once.
    session_version: int = Field(default=0, sa_column=sa.Column(
        sa.Integer, nullable=False, server_default="0"))
    # Set when an admin disables the account: no sign-in, no session.
    disabled_at: datetime | None = Field(default=None, sa_column=_ts())
    last_login_at: datetime | None = Field(default=None, sa_column=_ts())
    # Two-factor sign-in (TOTP): the secret, encrypted like a code (services/code_cipher.py);
    # set and not yet enabled while an enrollment waits for its first code.
    totp_secret_encrypted: bytes | None = Field(default=None, sa_column=sa.Column(
        sa.LargeBinary, nullable=True))
    totp_enabled_at: datetime | None = Field(default=None, sa_column=_ts())
    # The newest TOTP time step a code was accepted for: a code is accepted once, and never one
    # of an older step (no replay inside its window).
    totp_last_step: int | None = Field(default=None, sa_column=sa.Column(
        sa.BigInteger, nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class ManagerRecoveryCode(SQLModel, table=True):
    """A one-time recovery code of a manager's two-factor sign-in, kept as its SHA-256 (the
    codes are random, 50 bits each: no slow hash is needed to keep them unguessable)."""

    __table_args__ = (sa.UniqueConstraint("manager_id", "code_hash",
                                          name="uq_recovery_code_manager_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    manager_id: int = Field(sa_column=sa.Column(
        sa.Integer, sa.ForeignKey("manager.id", ondelete="CASCADE"), nullable=False))
    code_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=_ts())
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class ApiToken(SQLModel, table=True):
    """A bearer token for scripts (``/api/v1``), made by an admin with one of the managers'
    roles. The token itself is never stored: only its public ``prefix`` (shown in lists, and
    how a presented token is found) and the SHA-256 of the whole token (random, 256 bits: no
    slow hash is needed to keep it unguessable). Revoked or past ``expires_at``, it names no
    one."""

    __table_args__ = (
        sa.CheckConstraint("role IN ('viewer', 'manager', 'admin')", name="ck_apitoken_role"),
        sa.CheckConstraint("revoked_by IS NULL OR revoked_at IS NOT NULL",
                           name="ck_apitoken_revoked_by"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    role: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    prefix: str = Field(sa_column=sa.Column(sa.String(16), nullable=False, unique=True))
    secret_hash: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    created_by: int = Field(sa_column=sa.Column(sa.ForeignKey("manager.id"), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=_ts())
    # Moved at most once a minute (API_TOKEN_USE_RESOLUTION): a script's every request does
    # not write.
    last_used_at: datetime | None = Field(default=None, sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts())
    # The admin who revoked it (None: revoked from the command line).
    revoked_by: int | None = Field(default=None, sa_column=sa.Column(
        sa.ForeignKey("manager.id"), nullable=True))


class CodeBatch(SQLModel, table=True):
    __table_args__ = (
        sa.CheckConstraint("in_stock_count >= 0", name="ck_codebatch_stock_positive"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", nullable=False, index=True)
    name: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    source_filename: str | None = Field(default=None, sa_column=sa.Column(sa.String(500)))
    expires_on: date | None = Field(default=None, sa_column=sa.Column(sa.Date))
    code_count: int = Field(default=0, nullable=False)
    # The batch's codes in stock (status available), so the dashboard's stock per batch costs
    # one row read however many codes there are. Moved with ``program.in_stock_count`` in the
    # same transactions: raised by its import, lowered by ``stock.take`` (allocation, reissue) and
    # by a void of a code in stock, raised by a restore. ``verify`` checks it (I2).
    in_stock_count: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0"))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))


class Code(SQLModel, table=True):
    """A code, never in clear: its Fernet token and its keyed fingerprint
    (``services/code_cipher.py``)."""

    __table_args__ = (
        # A code once per program, compared by fingerprint. Fingerprint first, so the same
        # index finds a code in any program (an import reports those known elsewhere).
        sa.UniqueConstraint("fingerprint", "program_id", name="uq_code_fingerprint_program"),
        # Picking the next available code of a program is an index range scan.
        sa.Index("ix_code_pick", "program_id", "status", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", nullable=False)
    batch_id: int = Field(foreign_key="codebatch.id", nullable=False, index=True)
    # The code encrypted (a Fernet token), and which key made the token (rotation re-encrypts
    # what another key made).
    value_encrypted: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    key_id: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    # HMAC-SHA256 of the code under the fingerprint key: equal codes, equal fingerprints.
    fingerprint: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    status: CodeStatus = Field(
        default=CodeStatus.available,
        sa_column=sa.Column(sa.String(16), nullable=False, default=CodeStatus.available.value),
    )
    assigned_at: datetime | None = Field(default=None, sa_column=_ts())


class Claim(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("program_id", "creator_id", name="uq_claim_program_creator"),
        # Counting a program's claims by state, and walking its waitlist in order.
        sa.Index("ix_claim_program_state", "program_id", "state", "id"),
        # The waiting line alone (pending and waitlisted claims), in claim order: what
        # allocation serves. Partial, so it stays the obvious plan however stale the
        # statistics (with those of a program's first minutes, every claim pending, walking
        # the primary key would look as good).
        sa.Index("ix_claim_waiting", "program_id", "id", postgresql_where=sa.text(WAITING),
                 sqlite_where=sa.text(WAITING)),
        # The claims of a program's last hours (those not yet rolled up into ``claimhour``),
        # read by the dashboard as an index range, never by walking the program's claims.
        sa.Index("ix_claim_program_requested", "program_id", "requested_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", nullable=False)
    creator_id: int = Field(foreign_key="creator.id", nullable=False, index=True)
    # The creator's country when they claimed: what a country quota counts against.
    country: str = Field(sa_column=sa.Column(sa.String(2), nullable=False))
    state: ClaimState = Field(
        default=ClaimState.pending,
        sa_column=sa.Column(sa.String(16), nullable=False, default=ClaimState.pending.value),
    )
    reason: ClaimReason | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    code_id: int | None = Field(
        default=None, sa_column=sa.Column(sa.ForeignKey("code.id"), unique=True, nullable=True)
    )
    requested_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    decided_at: datetime | None = Field(default=None, sa_column=_ts())


class ClaimHour(SQLModel, table=True):
    """A program's claims of one complete UTC hour, rolled up by the sweeper
    (``dashboard.roll_up``) once the hour is over, and the program's stock counter as that
    rollup found it. The rows of a program end at its last rolled-up hour, which is always
    written (with no claims if none came): the claims after it are counted live. ``verify``
    checks the counts against the claims (I2)."""

    program_id: int = Field(foreign_key="program.id", primary_key=True)
    hour: datetime = Field(sa_column=sa.Column(UTCDateTime(), primary_key=True))
    claims: int = Field(default=0, nullable=False)
    in_stock: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))


class CodeAssignment(SQLModel, table=True):
    """History of codes given to claims. ``code_id`` is unique: a code is assigned once, ever
    (a voided code is never handed out again, to anyone)."""

    id: int | None = Field(default=None, primary_key=True)
    code_id: int = Field(
        sa_column=sa.Column(sa.ForeignKey("code.id"), nullable=False, unique=True)
    )
    claim_id: int = Field(foreign_key="claim.id", nullable=False, index=True)
    program_id: int = Field(foreign_key="program.id", nullable=False, index=True)
    assigned_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    voided_at: datetime | None = Field(default=None, sa_column=_ts())
    void_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))


class OutboundEmail(SQLModel, table=True):
    """One mail we owe somebody. Its body is rendered at send time and never stored."""

    __table_args__ = (
        # The mail telling a claim's owner about one code exists once per kind (sign-in mails
        # have neither claim nor code: NULLs don't collide).
        sa.UniqueConstraint("claim_id", "code_id", "kind", name="uq_outbound_claim_code_kind"),
        sa.Index("ix_outbound_status", "status", "next_attempt_at"),
        # The delivery page's failed and overdue mails of a program, a page at a time in id
        # order: a walk of the program's entries of one status from the page's keyset that
        # stops at the page, never a read and sort of every mail in that state, nor a walk of
        # other programs' backlogs. Partial: a mail recorded sent adds no entry, and the index
        # holds the mails still owed or failed only.
        sa.Index("ix_outbound_undelivered", "program_id", "status", "id",
                 postgresql_where=sa.text(UNDELIVERED), sqlite_where=sa.text(UNDELIVERED)),
        # The few mails marked possibly sent, counted by health without walking the outbox.
        sa.Index("ix_outbound_possibly_sent", "claim_id",
                 postgresql_where=sa.text("possibly_sent_at IS NOT NULL"),
                 sqlite_where=sa.text("possibly_sent_at IS NOT NULL")),
        # A program's invitation and reminder mails counted by status (the console's
        # invitations page, reloaded while they go out): a range of the program's mails of
        # those kinds, never a walk of the outbox (partial: no sign-in mail).
        sa.Index("ix_outbound_program_kind_status", "program_id", "kind", "status",
                 postgresql_where=sa.text("program_id IS NOT NULL"),
                 sqlite_where=sa.text("program_id IS NOT NULL")),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: MailKind = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    to_email: str = Field(sa_column=sa.Column(sa.String(320), nullable=False))
    creator_id: int | None = Field(default=None, foreign_key="creator.id", index=True)
    claim_id: int | None = Field(default=None, foreign_key="claim.id")
    code_id: int | None = Field(default=None, foreign_key="code.id")
    # The program the mail is about: the one an invitation or a reminder invites to, or a code
    # mail's claim's (written with the mail; migration 0020 filled it in for the code mails
    # before it; ``verify`` checks it, I5). A sign-in mail has none.
    program_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    # The language the mail is rendered in: its creator's when it was owed.
    locale: str = Field(default=DEFAULT_LOCALE, sa_column=sa.Column(
        sa.String(8), nullable=False, server_default=DEFAULT_LOCALE))
    status: MailStatus = Field(
        default=MailStatus.queued,
        sa_column=sa.Column(sa.String(16), nullable=False, default=MailStatus.queued.value),
    )
    attempts: int = Field(default=0, nullable=False)
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    message_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(300)))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    next_attempt_at: datetime | None = Field(default=None, sa_column=_ts())
    sending_started_at: datetime | None = Field(default=None, sa_column=_ts())
    sent_at: datetime | None = Field(default=None, sa_column=_ts())
    # When an attempt of this mail was found cut off between handing the message to the SMTP
    # server and recording what became of it (its worker died): the server may have taken it,
    # so the creator may hold two copies (same Message-ID) once it is sent again.
    possibly_sent_at: datetime | None = Field(default=None, sa_column=_ts())


class Invitation(SQLModel, table=True):
    """A program's invitation of one creator on its list, its one reminder, and their opt-out.

    The row is the invitation: one per program and creator (``uq_invitation_program_creator``),
    written in the transaction that owes its mail, so a run stopped half way and started again
    invites only those it had not; and a row has one reminder slot, filled once
    (``reminded_at IS NULL`` is the reminder's condition, and the two columns go together).
    """

    __table_args__ = (
        sa.UniqueConstraint("program_id", "creator_id", name="uq_invitation_program_creator"),
        sa.CheckConstraint("(reminded_at IS NULL) = (reminder_mail_id IS NULL)",
                           name="ck_invitation_reminder_mail"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", nullable=False)
    creator_id: int = Field(foreign_key="creator.id", nullable=False, index=True)
    invited_at: datetime = Field(sa_column=_ts(nullable=False))
    invitation_mail_id: int = Field(sa_column=sa.Column(
        sa.ForeignKey("outboundemail.id"), nullable=False, unique=True))
    reminded_at: datetime | None = Field(default=None, sa_column=_ts())
    reminder_mail_id: int | None = Field(default=None, sa_column=sa.Column(
        sa.ForeignKey("outboundemail.id"), nullable=True, unique=True))
    # Set by the one-click link of either mail: no further invitation mail of this program
    # (they may still sign in and claim).
    opted_out_at: datetime | None = Field(default=None, sa_column=_ts())


class AuditEvent(SQLModel, table=True):
    __table_args__ = (
        sa.Index("ix_audit_object", "object_type", "object_id"),
        # The audit log filtered by who or by what, newest first, page by page on (at, id): a
        # range of one of these however rare the actor or action among the claims' events.
        sa.Index("ix_audit_actor_at", "actor", "at", "id"),
        sa.Index("ix_audit_action_at", "action", "at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False, index=True))
    actor: str = Field(sa_column=sa.Column(sa.String(200), nullable=False))
    action: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    object_type: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    object_id: int | None = Field(default=None)
    program_id: int | None = Field(default=None, foreign_key="program.id", index=True)
    # JSON text; never holds a code or a sign-in token.
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text))


class ImportKind(enum.StrEnum):
    codes = "codes"        # a batch of codes
    creators = "creators"  # an eligibility list


class ImportJobState(enum.StrEnum):
    queued = "queued"    # committed by a manager, waiting for its task
    running = "running"  # its task is importing the file
    done = "done"        # the import ran (its report says what it imported)
    failed = "failed"    # the import stopped: nothing of it was written (``error`` says why)


class StagedUpload(SQLModel, table=True):
    """A file a manager uploaded to the console, checked but not imported yet: its report waits
    for them to commit or cancel. The file itself is kept in the instance folder under
    ``stored_name`` (random); the row and the file go at commit, cancel or expiry."""

    __table_args__ = (
        sa.CheckConstraint("kind IN ('codes', 'creators')", name="ck_stagedupload_kind"),
    )

    id: int | None = Field(default=None, primary_key=True)
    token: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    program_id: int = Field(foreign_key="program.id", nullable=False, index=True)
    manager_id: int = Field(foreign_key="manager.id", nullable=False)
    kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    filename: str = Field(sa_column=sa.Column(sa.String(500), nullable=False))
    stored_name: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    size_bytes: int = Field(nullable=False)
    batch_name: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    expires_on: date | None = Field(default=None, sa_column=sa.Column(sa.Date))
    # The dry run's report (JSON, ``ImportReport.as_dict``): line numbers, never a code.
    report: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    rows: int = Field(default=0, nullable=False)
    # The import job that already imported a file with these bytes into this program, if any.
    imported_before_job_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    expires_at: datetime = Field(sa_column=_ts(nullable=False))


class ImportJob(SQLModel, table=True):
    """A committed upload, imported in the request (small files) or by a task on the
    ``imports`` queue (large ones), with the progress the console shows."""

    __table_args__ = (
        sa.CheckConstraint("kind IN ('codes', 'creators')", name="ck_importjob_kind"),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed')",
                           name="ck_importjob_state"),
        # Whether a file was imported into a program before: its bytes' SHA-256.
        sa.Index("ix_importjob_program_sha256", "program_id", "sha256"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", nullable=False)
    manager_id: int = Field(foreign_key="manager.id", nullable=False)
    kind: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    filename: str = Field(sa_column=sa.Column(sa.String(500), nullable=False))
    # The staged file, until the import has run (then it is deleted and this is None).
    stored_name: str | None = Field(default=None, sa_column=sa.Column(sa.String(100)))
    sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    size_bytes: int = Field(default=0, nullable=False)
    batch_name: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))
    expires_on: date | None = Field(default=None, sa_column=sa.Column(sa.Date))
    skip_invalid: bool = Field(default=False, nullable=False)
    state: str = Field(default=ImportJobState.queued.value,
                       sa_column=sa.Column(sa.String(16), nullable=False))
    rows_total: int = Field(default=0, nullable=False)
    rows_done: int = Field(default=0, nullable=False)
    imported: int = Field(default=0, nullable=False)
    batch_id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    # The import's report (JSON) once it ran; the stable code of what stopped it, if it failed.
    report: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(nullable=False))
    started_at: datetime | None = Field(default=None, sa_column=_ts())
    finished_at: datetime | None = Field(default=None, sa_column=_ts())
    # Queued: when its task was last handed to the broker; running: when its worker last wrote
    # progress. The sweeper hands out again a job whose heartbeat is too old.
    heartbeat_at: datetime | None = Field(default=None, sa_column=_ts())
    # Runs started (each a whole import from the file): at IMPORT_MAX_ATTEMPTS it fails.
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False,
                                                         server_default="0"))
