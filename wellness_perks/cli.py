"""The ``wellness-perks`` command line: each command a thin call into the services.

Installed as the ``wellness-perks`` console script (``wellness_perks.main``, a Flask CLI group),
so ``flask --app wellness_perks ...`` runs the same commands.
"""

from __future__ import annotations

import json
import secrets
import sys
from datetime import UTC, date, datetime, timedelta
from io import BytesIO
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext
from sqlmodel import select

from .db import get_session
from .models import MANAGER_ROLES, Manager
from .services import (
    api_tokens,
    auth,
    code_cipher,
    codes,
    creators,
    health,
    imports,
    invitations,
    mail,
    managers,
    privacy,
    programs,
    sweeper,
    two_factor,
)
from .services import verify as violations
from .services.countries import normalise_country, parse_country_quota
from .services.errors import DomainError
from .services.imports import FileRejected, ImportReport

CLI_ACTOR = "cli"


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _parse_when(value: str | None, option: str, local: bool = False) -> datetime | None:
    """An ISO 8601 time; without a zone it is UTC, or with ``local`` left for the service to
    read in the program's time zone."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"{option} {value!r} is not an ISO 8601 date or time (e.g. 2026-12-01T09:00+05:00)")
    if local:
        return parsed
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _program(slug: str):
    try:
        return programs.get_program(get_session(), slug)
    except DomainError as exc:
        _fail(str(exc))


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create or upgrade the database schema (alembic upgrade head)."""
    from .migrate import upgrade

    config = current_app.config
    upgrade(config["DATABASE_URL"], code_keys={
        "CODE_ENCRYPTION_KEY": config["CODE_ENCRYPTION_KEY"],
        "CODE_FINGERPRINT_KEY": config["CODE_FINGERPRINT_KEY"]})
    click.echo("database is at the newest schema")


@click.command("create-manager")
@click.argument("email")
@click.option("--role", type=click.Choice(MANAGER_ROLES), default="manager", show_default=True,
              help="viewer reads; manager runs programs; admin also creates programs, "
                   "managers and API tokens.")
@click.password_option("--password", help="Prompted for (twice) when not given.")
@with_appcontext
def create_manager_command(email: str, role: str, password: str) -> None:
    """Create a console account (sign in at /manage/login)."""
    try:
        manager = auth.create_manager(get_session(), email=email, password=password,
                                      role=role, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"{manager.role} {manager.email} created")


@click.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True,
              help="Read the new password from the first line of standard input (no prompt).")
@with_appcontext
def set_password_command(email: str, password_stdin: bool) -> None:
    """Give a console account a new password (at least 12 characters) and end its sessions;
    its second factor stays, and a lockout of wrong passwords ends."""
    if password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = click.prompt("New password", hide_input=True, confirmation_prompt=True)
    try:
        done = managers.set_password(get_session(), email=email, password=password,
                                     actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"password of {done.email} set; their sessions have ended")
    if done.failures_forgotten:
        click.echo(f"{done.failures_forgotten} wrong password(s) forgotten: "
                   "the address's sign-in lockout has ended")


@click.command("create-api-token")
@click.option("--name", required=True, help="What uses it, e.g. 'nightly report'.")
@click.option("--role", type=click.Choice(MANAGER_ROLES), required=True,
              help="What it may do, as a manager of that role (give a script the least).")
@click.option("--by", "by_email", required=True, metavar="ADMIN_EMAIL",
              help="The admin who makes it (an active admin's address).")
@click.option("--expires-days", type=click.IntRange(min=1, max=api_tokens.MAX_EXPIRES_DAYS),
              help="Expires after this many days (default: never).")
@with_appcontext
def create_api_token_command(name: str, role: str, by_email: str,
                             expires_days: int | None) -> None:
    """Make an API token for scripts (/api/v1); the token is printed once, alone on
    standard output, and never again (only its hash is kept)."""
    try:
        admin = managers.find_by_email(get_session(), by_email)
        created = api_tokens.create(get_session(), name=name, role=role,
                                    created_by=admin.manager_id,
                                    expires_in_days=expires_days, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    row = created.row
    until = f", expires {row.expires_at:%Y-%m-%d %H:%M} UTC" if row.expires_at else ""
    click.echo(f"{row.role} token {row.name!r} made, prefix {row.prefix}{until}; copy it now, "
               "it will not be shown again:", err=True)
    click.echo(created.token)


@click.command("list-api-tokens")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@with_appcontext
def list_api_tokens_command(as_json: bool) -> None:
    """Every API token (never the token itself): name, role, prefix, who made it, when, its
    last use, expiry and state."""
    now = datetime.now(UTC)
    listed = api_tokens.list_tokens(get_session())

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    if as_json:
        click.echo(json.dumps([{
            "name": t.name, "role": t.role, "prefix": t.prefix, "created_by": t.created_by,
            "created_at": when(t.created_at), "last_used_at": when(t.last_used_at),
            "expires_at": when(t.expires_at), "revoked_at": when(t.revoked_at),
            "revoked_by": t.revoked_by, "state": t.state(now).value} for t in listed],
            indent=2))
        return
    if not listed:
        click.echo("no API token yet: create-api-token makes one")
        return

    def short(value: datetime | None) -> str:
        return f"{value:%Y-%m-%d %H:%M}" if value else "never"

    header = ("prefix", "name", "role", "state", "made by", "made", "last used", "expires")
    rows = [(t.prefix, t.name, t.role, t.state(now).value, t.created_by, short(t.created_at),
             short(t.last_used_at), short(t.expires_at)) for t in listed]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                   .rstrip())


@click.command("revoke-api-token")
@click.argument("prefix")
@with_appcontext
def revoke_api_token_command(prefix: str) -> None:
    """Revoke the API token of this prefix (list-api-tokens shows it): it stops working at
    once."""
    try:
        revoked = api_tokens.revoke(get_session(), prefix=prefix.strip().lower(),
                                    revoked_by=None, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"token {prefix} revoked" if revoked else f"token {prefix} was already revoked")


@click.command("create-program")
@click.option("--slug", required=True, help="Short name used in URLs, e.g. headspace-6m.")
@click.option("--name", required=True, help="What creators see, e.g. 'Headspace · 6 months'.")
@click.option("--quota", required=True, type=click.IntRange(min=0),
              help="How many codes may be handed out in all.")
@click.option("--months", default=6, show_default=True, type=click.IntRange(min=1),
              help="Length of the subscription the perk gives.")
@click.option("--opens", help="When claims open (ISO 8601; no zone means UTC, or --time-zone).")
@click.option("--closes", help="When claims close (ISO 8601; no zone means UTC, or --time-zone).")
@click.option("--time-zone", help="IANA zone of the claim window, e.g. Asia/Karachi: --opens "
                                  "and --closes without a zone are local times there.")
@click.option("--redeem-url", help="Link to redeem a code; {code} is replaced by the code.")
@click.option("--support-email", help="Where creators write with questions (program page and "
                                      "code mail; default HELP_EMAIL).")
@click.option("--code-format", help="Regular expression every code must match in full.")
@click.option("--country-quota", "country_quota_options", multiple=True, metavar="CC=N",
              help="Cap allocations to one country, e.g. PK=2000 (repeatable).")
@with_appcontext
def create_program_command(slug, name, quota, months, opens, closes, time_zone, redeem_url,
                           support_email, code_format, country_quota_options):
    """Create a program (a perk with its quota and claim window)."""
    try:
        by_country = dict(parse_country_quota(o) for o in country_quota_options)
        program = programs.create_program(
            get_session(), slug=slug, name=name, quota=quota, perk_months=months,
            opens_at=_parse_when(opens, "--opens", local=time_zone is not None),
            closes_at=_parse_when(closes, "--closes", local=time_zone is not None),
            time_zone=time_zone, redeem_url=redeem_url, support_email=support_email,
            code_pattern=code_format, country_quotas=by_country,
            actor=CLI_ACTOR,
        )
    except DomainError as exc:
        _fail(str(exc))
    extra = "".join(f", {c} {n}" for c, n in sorted(by_country.items()))
    click.echo(f"program {program.slug} created (quota {program.quota}{extra})")


@click.command("set-quota")
@click.argument("slug")
@click.option("--quota", type=click.IntRange(min=0), help="New global quota.")
@click.option("--country-quota", "country_quota_options", multiple=True, metavar="CC=N",
              help="Set a country's quota, e.g. PK=2500 (repeatable).")
@click.option("--no-country-quota", "uncapped", multiple=True, metavar="CC",
              help="Remove a country's quota (repeatable).")
@with_appcontext
def set_quota_command(slug, quota, country_quota_options, uncapped):
    """Change a program's quota or country quotas; raising one serves the waitlist."""
    program = _program(slug)
    try:
        changes: dict[str, int | None] = dict(parse_country_quota(o)
                                              for o in country_quota_options)
        changes |= {normalise_country(c, "no-country-quota"): None for c in uncapped}
        if quota is None and not changes:
            _fail("nothing to change: give --quota, --country-quota or --no-country-quota")
        programs.set_quota(get_session(), program_id=program.id, quota=quota,
                           country_quotas=changes, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"quota of {slug} changed")
    _echo_summary(programs.quota_summary(get_session(), program))


@click.command("pause")
@click.argument("slug")
@with_appcontext
def pause_command(slug: str) -> None:
    """Pause claiming: new claims are refused until `resume` (claims waiting are served)."""
    program = _program(slug)
    try:
        programs.pause_claims(get_session(), program_id=program.id, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"claiming of {slug} is paused")


@click.command("resume")
@click.argument("slug")
@with_appcontext
def resume_command(slug: str) -> None:
    """Resume claiming after `pause`."""
    program = _program(slug)
    try:
        programs.resume_claims(get_session(), program_id=program.id, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"claiming of {slug} has resumed")


def _run_import(path: Path, as_json: bool, label: str, do_import) -> None:
    size = path.stat().st_size
    show_bar = not as_json and sys.stderr.isatty()
    with path.open("rb") as stream, click.progressbar(
        length=size, label=label, file=sys.stderr, show_pos=False, hidden=not show_bar
    ) as bar:
        seen = 0
        rejected = False

        def progress(bytes_read: int) -> None:
            nonlocal seen
            bar.update(bytes_read - seen)
            seen = bytes_read

        try:
            report: ImportReport = do_import(stream, progress)
        except FileRejected as exc:
            report = ImportReport(invalid=1, errors=[exc.issue])
            rejected = True
        except DomainError as exc:
            _fail(str(exc))
    _print_report(report, path, as_json, rejected)
    if not report.committed:
        sys.exit(1)


def _print_report(report: ImportReport, path: Path, as_json: bool, rejected: bool) -> None:
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    for issue in report.errors:
        click.echo(f"{path.name}: line {issue.line}, {issue.field}: {issue.reason}", err=True)
    if not_listed := getattr(report.errors, "not_listed", 0):
        click.echo(f"{path.name}: and {not_listed:,} more errors", err=True)
    for issue in report.duplicates:
        click.echo(f"{path.name}: line {issue.line}, {issue.field}: duplicate, skipped "
                   f"({issue.reason})", err=True)
    if not_listed := getattr(report.duplicates, "not_listed", 0):
        click.echo(f"{path.name}: and {not_listed:,} more duplicates", err=True)
    click.echo(f"imported {report.imported}, duplicate {report.duplicate}, "
               f"invalid {report.invalid}")
    if report.in_other_programs:
        listed = report.in_other_programs_lines
        more = report.in_other_programs - len(listed)
        click.echo(f"{report.in_other_programs} of the codes imported are held by another "
                   f"program too (not an error): line{'s' if len(listed) > 1 else ''} "
                   f"{', '.join(map(str, listed))}{f' and {more} more' if more else ''}")
    if rejected:  # the file as a whole: --skip-invalid would not help
        click.echo("nothing was imported: the file was rejected", err=True)
    elif not report.committed:
        click.echo("nothing was imported: fix the rows above, or pass --skip-invalid to import "
                   "the valid rows only", err=True)


@click.command("import-creators")
@click.argument("slug")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Import the valid rows even if some are not.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
def import_creators_command(slug: str, csv_file: Path, skip_invalid: bool, as_json: bool):
    """Import a program's eligibility list (CSV: handle,email,country[,name])."""
    program = _program(slug)
    _run_import(csv_file, as_json, "importing creators", lambda stream, progress:
                imports.import_creators(get_session(), program=program, stream=stream,
                                        filename=str(csv_file), skip_invalid=skip_invalid,
                                        progress=progress, actor=CLI_ACTOR))


@click.command("import-codes")
@click.argument("slug")
@click.argument("codes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--expires", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Last day the codes can be redeemed (YYYY-MM-DD).")
@click.option("--no-expiry", is_flag=True, help="The codes do not expire (instead of --expires).")
@click.option("--batch-name", help="Name of the batch (default: file name and time).")
@click.option("--skip-invalid", is_flag=True, help="Import the valid codes even if some are not.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
def import_codes_command(slug, codes_file: Path, expires, no_expiry, batch_name, skip_invalid,
                         as_json):
    """Import a batch of codes (CSV with a 'code' column, or one code per line). Say when they
    expire: --expires YYYY-MM-DD, or --no-expiry."""
    expires_on = _expiry(expires, no_expiry)
    program = _program(slug)
    _run_import(codes_file, as_json, "importing codes", lambda stream, progress:
                imports.import_codes(get_session(), program=program, stream=stream,
                                     filename=str(codes_file), batch_name=batch_name,
                                     expires_on=expires_on, skip_invalid=skip_invalid,
                                     progress=progress, actor=CLI_ACTOR))


def _expiry(expires: datetime | None, no_expiry: bool) -> date | None:
    """The date of --expires, or None for an explicit --no-expiry; one of them is required."""
    if expires is not None and no_expiry:
        raise click.UsageError("give --expires or --no-expiry, not both")
    if expires is None and not no_expiry:
        raise click.UsageError("say when the codes expire: --expires YYYY-MM-DD, or --no-expiry "
                               "if they never do")
    return expires.date() if expires is not None else None


@click.command("set-batch-expiry")
@click.argument("slug")
@click.argument("batch")
@click.option("--expires", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="New last day the batch's codes can be redeemed (YYYY-MM-DD).")
@click.option("--no-expiry", is_flag=True, help="The batch's codes do not expire.")
@with_appcontext
def set_batch_expiry_command(slug: str, batch: str, expires, no_expiry: bool) -> None:
    """Change when a batch's codes expire (BATCH: its id or its name)."""
    expires_on = _expiry(expires, no_expiry)
    program = _program(slug)
    try:
        change = codes.set_batch_expiry(get_session(), program_id=program.id, batch=batch,
                                        expires_on=expires_on, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))

    def said(day: date | None) -> str:
        return day.isoformat() if day else "no expiry"

    click.echo(f"batch #{change.batch_id} ({change.name}): expiry {said(change.before)} -> "
               f"{said(change.after)}")


@click.command("void-batch")
@click.argument("slug")
@click.argument("batch")
@click.option("--reason", required=True, help="Why, for the audit log (e.g. 'partner recalled').")
@with_appcontext
def void_batch_command(slug: str, batch: str, reason: str) -> None:
    """Void the codes of a batch still in stock (BATCH: its id or its name); codes creators
    hold are left alone."""
    program = _program(slug)
    try:
        result = codes.void_batch(get_session(), program_id=program.id, batch=batch,
                                  reason=reason, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    voided = (f"{result.voided} code{'s' if result.voided != 1 else ''} in stock voided"
              if result.voided else "no code of it was in stock: nothing voided")
    click.echo(f"batch #{result.batch_id} ({result.name}): {voided}; {result.held} held by "
               "creators, left alone")


@click.command("list-programs")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (a stable interface).")
@with_appcontext
def list_programs_command(as_json: bool) -> None:
    """Every program: window, quota, allocated, in stock and claims."""
    listed = programs.program_summaries(get_session())
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    if not listed:
        click.echo("no program yet: create-program makes one")
        return
    header = ("program", "name", "window", "quota", "allocated", "in stock", "claims")
    rows = [(p["program"], p["name"], p["window"], *(f"{p[k]:,}" for k in (
        "quota", "allocated", "in_stock", "claims_total"))) for p in listed]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(w) if i < 3 else str(cell).rjust(w)
                             for i, (cell, w) in enumerate(zip(row, widths, strict=True))))


@click.command("show-creator")
@click.argument("slug")
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (a stable interface).")
@with_appcontext
def show_creator_command(slug: str, email: str, as_json: bool) -> None:
    """A creator in a program (a support case): their claim, its code masked, and every mail
    to them."""
    program = _program(slug)
    try:
        case = creators.creator_case(get_session(), program_id=program.id, email=email)
    except DomainError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(case, indent=2))
        return
    who = case["creator"]
    click.echo(f"creator #{who['id']} {who['email']} {who['handle']} ({who['country']}, "
               f"reads {who['locale']}): {'on' if who['on_list'] else 'not on'} the list of "
               f"{slug}")
    if not case["claims"]:
        click.echo("  no claim in this program")
    for claim in case["claims"]:
        reason = f" ({claim['reason']})" if claim["reason"] else ""
        decided = f", decided {claim['decided_at']}" if claim["decided_at"] else ""
        click.echo(f"  claim #{claim['id']}: {claim['state']}{reason}, requested "
                   f"{claim['requested_at']}{decided}")
        if held := claim["code"]:
            expires = held["expires_on"] or "no expiry"
            click.echo(f"    code #{held['id']} {held['masked']} ({held['status']}), batch "
                       f"#{held['batch_id']} {held['batch']}, expires {expires}")
    if not case["mails"]:
        click.echo("  no mail to them")
    for m in case["mails"]:
        sent = f", sent {m['sent_at']}" if m["sent_at"] else ""
        error = f", last error: {m['last_error']}" if m["last_error"] else ""
        twice = ", possibly sent twice" if m["possibly_sent"] else ""
        click.echo(f"  mail #{m['id']} {m['kind']}: {m['status']} after {m['attempts']} "
                   f"attempt{'s' if m['attempts'] != 1 else ''}{sent}{error}{twice}")


@click.command("resend")
@click.argument("slug")
@click.argument("email")
@with_appcontext
def resend_command(slug: str, email: str) -> None:
    """Send a creator their code mail again (at most once every RESEND_MIN_INTERVAL_MINUTES)."""
    program = _program(slug)
    try:
        outbound_id = mail.resend_claim_mail(get_session(), program_id=program.id,
                                             creator_email=email, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"mail #{outbound_id} queued again")


@click.command("remove-creator")
@click.argument("slug")
@click.argument("email")
@click.option("--reason", required=True, help="Why, for the audit log.")
@with_appcontext
def remove_creator_command(slug: str, email: str, reason: str) -> None:
    """Take a creator off a program's list (mark them ineligible): a claim of theirs still
    waiting is refused; a code they hold stays theirs."""
    program = _program(slug)
    try:
        removal = creators.remove_from_list(get_session(), program_id=program.id, email=email,
                                            reason=reason, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    said = (f"{removal.email} removed from the list of {slug}" if removal.was_on_list
            else f"{removal.email} was not on the list of {slug}")
    if removal.refused:
        said += f"; their {removal.claim_state} claim #{removal.claim_id} is refused"
    elif removal.claim_state == "allocated":
        said += (f"; their claim #{removal.claim_id} holds a code and is left alone "
                 "(reissue or void-code take it back)")
    elif removal.claim_id is not None:
        said += f"; their claim #{removal.claim_id} was already {removal.claim_state}"
    click.echo(said)


@click.command("quota")
@click.argument("slug")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (a stable interface).")
@with_appcontext
def quota_command(slug: str, as_json: bool) -> None:
    """Quota, allocations, codes in stock and claims by state."""
    summary = programs.quota_summary(get_session(), _program(slug))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _echo_summary(summary)


def _echo_summary(summary: dict) -> None:
    click.echo(f"{summary['name']} ({summary['program']})")
    for key in ("quota", "allocated", "remaining", "in_stock"):
        click.echo(f"  {key.replace('_', ' '):<10} {summary[key]:>9}")
    click.echo("  claims")
    for state, count in summary["claims"].items():
        click.echo(f"    {state:<11} {count:>8}")
    if summary["countries"]:
        click.echo("  country quotas")
        for country, row in summary["countries"].items():
            click.echo(f"    {country}  {row['allocated']:>7} of {row['quota']:>7}")


@click.command("void-code")
@click.argument("slug")
@click.argument("code")
@click.option("--reason", required=True, help="Why, for the audit log (e.g. 'partner: invalid').")
@with_appcontext
def void_code_command(slug: str, code: str, reason: str) -> None:
    """Take a code out of use. If a creator holds it, they get a new one by mail."""
    program = _program(slug)
    try:
        result = codes.void_code(get_session(), program_id=program.id, value=code, reason=reason,
                                 actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    if result.reissued_claim_id:
        click.echo(f"code #{result.code_id} voided; claim #{result.reissued_claim_id} got "
                   f"code #{result.new_code_id}, mailed to its creator")
    else:
        click.echo(f"code #{result.code_id} voided (it was in stock)")


@click.command("reissue")
@click.argument("slug")
@click.argument("email")
@click.option("--reason", required=True, help="Why, for the audit log.")
@with_appcontext
def reissue_command(slug: str, email: str, reason: str) -> None:
    """Void the code a creator holds and mail them the next one."""
    program = _program(slug)
    try:
        result = codes.reissue_claim(get_session(), program_id=program.id, creator_email=email,
                                     reason=reason, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"claim #{result.reissued_claim_id}: code #{result.code_id} voided, "
               f"code #{result.new_code_id} mailed")


@click.command("restore-code")
@click.argument("slug")
@click.argument("code")
@with_appcontext
def restore_code_command(slug: str, code: str) -> None:
    """Put a voided code that was never given out back in stock."""
    program = _program(slug)
    try:
        code_id = codes.restore_code(get_session(), program_id=program.id, value=code,
                                     actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"code #{code_id} is back in stock")


@click.command("rotate-code-key")
@click.option("--batch-size", type=click.IntRange(min=1), default=codes.ROTATION_BATCH,
              show_default=True, help="Codes re-encrypted per transaction.")
@click.option("--show-fingerprint-key", is_flag=True,
              help="Only print the fingerprint key in use (to set CODE_FINGERPRINT_KEY to it "
                   "before the oldest encryption key is retired).")
@with_appcontext
def rotate_code_key_command(batch_size: int, show_fingerprint_key: bool) -> None:
    """Re-encrypt every code under the newest key of CODE_ENCRYPTION_KEY (resumable: run it
    again after an interruption)."""
    cipher = code_cipher.cipher()
    if show_fingerprint_key:
        click.echo(cipher.fingerprint_key)
        return
    session = get_session()
    left = codes.codes_under_older_keys(session)
    with click.progressbar(length=left, label="re-encrypting codes", file=sys.stderr,
                           hidden=not sys.stderr.isatty() or not left) as bar:
        try:
            rotated = codes.rotate_code_key(session, actor=CLI_ACTOR, batch_size=batch_size,
                                            progress=bar.update)
        except DomainError as exc:
            _fail(str(exc))
    click.echo(f"{rotated} code{'s' if rotated != 1 else ''} re-encrypted under the newest key; "
               "every code is under it now")
    try:  # the managers' two-factor secrets are under the same keys
        secrets_rotated = two_factor.rotate_secrets(session)
    except DomainError as exc:
        _fail(str(exc))
    if secrets_rotated:
        click.echo(f"{secrets_rotated} manager two-factor secret"
                   f"{'s' if secrets_rotated != 1 else ''} re-encrypted too")
    if len(cipher.key_ids) > 1:
        click.echo("the older keys can now be removed from CODE_ENCRYPTION_KEY")
        if cipher.fingerprint_key_derived:
            click.echo("before the oldest is removed, set CODE_FINGERPRINT_KEY to what "
                       "`wellness-perks rotate-code-key --show-fingerprint-key` prints: the "
                       "fingerprints are derived from the oldest key", err=True)


@click.command("verify")
@click.argument("slug")
@click.option("--json", "as_json", is_flag=True, help="Print violations as JSON.")
@with_appcontext
def verify_command(slug: str, as_json: bool) -> None:
    """Check the invariants I1-I5 of a program; exit 0 only when all hold. Work the program
    still owes (failed mails, mails and claims overdue) is listed after, as "owed:" lines."""
    program = _program(slug)
    found = violations.verify_program(get_session(), program_id=program.id)
    owed = violations.owed_work(get_session(), program_id=program.id)
    doubtful = violations.possibly_sent(get_session(), program_id=program.id)
    if as_json:
        click.echo(json.dumps({"program": slug, "ok": not found,
                               "violations": [v.as_dict() for v in found],
                               "owed": [o.as_dict() for o in owed],
                               "possibly_sent": [{"outbound_id": outbound_id,
                                                  "claim_id": claim_id}
                                                 for outbound_id, claim_id in doubtful]},
                              indent=2))
    else:
        for violation in found:
            click.echo(str(violation))
        for outbound_id, claim_id in doubtful:
            click.echo(f"possibly sent twice: mail #{outbound_id} (claim={claim_id}): its "
                       "worker died mid-send, a second copy with the same Message-ID may "
                       "have arrived")
        click.echo(f"{slug}: {len(found)} violation(s)" if found else
                   f"{slug}: I1-I5 hold")
        for line in owed:  # work still owed: it does not change the verdict
            click.echo(str(line))
    if found:
        sys.exit(1)


@click.command("forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def forget_command(email: str, yes: bool) -> None:
    """Remove a person's email, handle and name from every table (their claim and code stay,
    anonymous, for the accounting)."""
    if not yes:
        click.confirm(f"Forget {email}? This cannot be undone", abort=True)
    try:
        result = privacy.forget_creator(get_session(), email=email, actor=CLI_ACTOR)
    except DomainError as exc:
        _fail(str(exc))
    failed = (f"; {result.mails_failed} mail(s) still owed to them marked failed"
              if result.mails_failed else "")
    click.echo(f"creator #{result.creator_id} forgotten{failed}")


@click.command("sweep")
@with_appcontext
def sweep_command() -> None:
    """Re-enqueue claims pending too long, mails due and stuck import jobs (what Celery beat
    runs periodically)."""
    report = sweeper.sweep(get_session())
    click.echo(f"programs re-allocated: {len(report.programs)}, mails re-sent: "
               f"{len(report.mails)}, interrupted mails re-queued: "
               f"{len(report.interrupted_mails)}, imports handed out: {len(report.imports)}, "
               f"interrupted imports given up: {len(report.failed_imports)}")


DEMO_SLUG = "demo-6m"
DEMO_MANAGER = "manager@example.com"
DEMO_COUNTRIES = ("PK", "IN", "BR", "NG", "US", "GB", "ID", "EG")
DEMO_CREATORS = 30
DEMO_CODES = 25


@click.command("seed-demo")
@with_appcontext
def seed_demo_command() -> None:
    """Create a demo program with creators and codes (once); print how to sign in."""
    session = get_session()
    base_url = current_app.config["BASE_URL"]
    try:
        programs.get_program(session, DEMO_SLUG)
    except DomainError:
        # Checked first: failing on it after the program is made would leave a half-made demo
        # that the next run takes for done.
        manager_exists = session.exec(
            select(Manager.id).where(Manager.email == DEMO_MANAGER)).first() is not None
        now = datetime.now(UTC)
        program = programs.create_program(
            session, slug=DEMO_SLUG, name="Mindful Minutes · 6 months", quota=DEMO_CODES,
            perk_months=6, opens_at=now - timedelta(hours=1), closes_at=now + timedelta(days=60),
            redeem_url="https://mindful.example/redeem?code={code}", actor="seed-demo",
        )
        creators_csv = "handle,email,country,name\n" + "".join(
            f"@creator{i:02d},creator{i:02d}@example.com,"
            f"{DEMO_COUNTRIES[i % len(DEMO_COUNTRIES)]},Creator {i:02d}\n"
            for i in range(1, DEMO_CREATORS + 1)
        )
        imports.import_creators(session, program=program, stream=BytesIO(creators_csv.encode()),
                                filename="demo-creators.csv", actor="seed-demo")
        codes = "".join(f"DEMO-{secrets.token_hex(3).upper()}-{secrets.token_hex(3).upper()}\n"
                        for _ in range(DEMO_CODES))
        imports.import_codes(session, program=program, stream=BytesIO(codes.encode()),
                             filename="demo-codes.txt", batch_name="demo batch",
                             expires_on=(now + timedelta(days=365)).date(), actor="seed-demo")
        click.echo(f"demo program {DEMO_SLUG} created: quota {DEMO_CODES}, {DEMO_CODES} codes, "
                   f"{DEMO_CREATORS} creators")
        if manager_exists:
            click.echo(f"demo manager {DEMO_MANAGER} already exists (password unchanged)")
        else:
            password = secrets.token_urlsafe(12)
            auth.create_manager(session, email=DEMO_MANAGER, password=password,
                                role="admin", actor="seed-demo")
            click.echo(f"demo admin {DEMO_MANAGER}, password {password} (shown once)")
    else:
        click.echo(f"demo program {DEMO_SLUG} already exists")
    outbox = current_app.config["OUTBOX_DIR"] if not current_app.config["SMTP_HOST"] else None
    click.echo("")
    click.echo("Sign in as a creator:")
    click.echo(f"  1. open {base_url}/login")
    click.echo(f"  2. enter creator01@example.com (any of creator01 .. creator{DEMO_CREATORS:02d})")
    if outbox:
        click.echo(f"  3. open the newest mail in {outbox} (ls -t {outbox} | head -1) and "
                   "follow its sign-in link, then press Sign in")
    else:
        click.echo("  3. follow the sign-in link in the mail your SMTP server received, then "
                   "press Sign in")
    click.echo("  4. open the program and press Claim; the code mail lands in the same place")
    click.echo("")
    click.echo("Sign in as a manager:")
    click.echo(f"  1. open {base_url}/manage/login and enter {DEMO_MANAGER} with the password "
               "printed when the demo was made")
    click.echo("  2. the first time, an admin sets up two-factor sign-in: add the key shown (or "
               "scan its QR code) in an authenticator app, enter the 6-digit code it shows, and "
               "keep the 10 recovery codes")
    click.echo("  3. after that, each sign-in asks for the password, then the app's current code")
    click.echo("  (another account: wellness-perks create-manager EMAIL --role admin, or "
               f"Managers in the console: {base_url}/manage/managers)")


@click.command("resend-failed")
@click.argument("slug")
@click.option("--since", help="Only mails created at or after this time (ISO 8601; no zone: UTC).")
@with_appcontext
def resend_failed_command(slug: str, since: str | None) -> None:
    """Send again the mails of a program that failed: its code mails (not those whose code was
    voided since) and its invitations and reminders (those whose creator has claimed or opted
    out since are cancelled instead); never those of a forgotten creator."""
    since_at = _parse_when(since, "--since")
    program = _program(slug)
    done = mail.resend_failed(get_session(), program_id=program.id, actor=CLI_ACTOR,
                              since=since_at)
    queued = len(done.mail_ids)
    if queued:
        click.echo(f"{queued} failed mail{'s' if queued != 1 else ''} queued again")
    else:
        click.echo("no failed mail to send again")
    if done.cancelled:
        click.echo(f"{len(done.cancelled)} failed invitation(s) or reminder(s) cancelled, "
                   "not sent: their creator has claimed or opted out since")


def _send_invitations(slug: str, kind: str, after_days: int | None = None) -> None:
    program = _program(slug)
    try:
        outcome = invitations.send(get_session(), program_id=program.id, kind=kind,
                                   actor=CLI_ACTOR, after_days=after_days)
        left = invitations.counts(get_session(), program_id=program.id, after_days=after_days)
    except DomainError as exc:
        _fail(str(exc))
    click.echo(f"{outcome.queued} {kind}{'s' if outcome.queued != 1 else ''} queued "
               f"(MAIL_RATE_LIMIT paces them); {left.invited} invited, {left.reminded} "
               f"reminded, {left.opted_out} opted out, {left.claimed} claimed of "
               f"{left.eligible} on the list")


@click.command("invite")
@click.argument("slug")
@with_appcontext
def invite_command(slug: str) -> None:
    """Invite everyone on the program's list who has not claimed nor been invited (a run
    stopped half way goes on where it stopped; nobody is invited twice)."""
    _send_invitations(slug, "invitation")


@click.command("remind")
@click.argument("slug")
@click.option("--after-days", type=click.IntRange(min=0), default=None,
              help="Remind those invited this many days ago or more (default: "
                   "INVITE_REMINDER_DAYS).")
@with_appcontext
def remind_command(slug: str, after_days: int | None) -> None:
    """Remind, once, those invited who have still not claimed nor opted out."""
    _send_invitations(slug, "reminder", after_days)


@click.command("health")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@with_appcontext
def health_command(as_json: bool) -> None:
    """Check the database, the broker, the workers of each queue and the work owed; exit 0
    only when all is ok (1 when degraded or in error)."""
    report = health.check(get_session())
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for line in report.lines():
            click.echo(line)
    if report.status != health.Status.ok:
        sys.exit(1)


COMMANDS = (
    init_db_command,
    create_manager_command,
    set_password_command,
    create_api_token_command,
    list_api_tokens_command,
    revoke_api_token_command,
    create_program_command,
    set_quota_command,
    pause_command,
    resume_command,
    import_creators_command,
    import_codes_command,
    set_batch_expiry_command,
    void_batch_command,
    list_programs_command,
    show_creator_command,
    resend_command,
    remove_creator_command,
    void_code_command,
    reissue_command,
    restore_code_command,
    rotate_code_key_command,
    quota_command,
    verify_command,
    health_command,
    sweep_command,
    resend_failed_command,
    invite_command,
    remind_command,
    forget_command,
    seed_demo_command,
)


def init_app(app: Flask) -> None:
    for command in COMMANDS:
        app.cli.add_command(command)
