"""Importing the eligibility list and code batches from files.

Both imports stream their file (never read whole into memory), validate every row, and report
each rejected row with its line number, field and reason. They are all-or-nothing: one invalid
row and nothing is written, unless the caller asks to skip invalid rows.

``dry_run=True`` is the same parse and the same checks with nothing written: the report says what
an import of the file would do (every row checked, as if invalid rows were skipped), for a
manager to read before committing. Codes are then fingerprinted, never encrypted, and looked up
by fingerprint; a code's value is never in a report, only masked (``codes.mask_code``).
"""

from __future__ import annotations

import csv
import difflib
import functools
import io
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import BinaryIO

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlmodel import Session

from .. import dispatch
from ..db import begin_write
from ..models import (
    DEFAULT_CODE_PATTERN,
    Code,
    CodeBatch,
    CodeStatus,
    Creator,
    Eligibility,
    Program,
)
from . import audit, code_cipher, stock
from .codes import mask_code
from .countries import normalise_country
from .emails import normalise_email
from .errors import Conflict, InvalidInput

WRITE_CHUNK = 1000
MAX_CODE_LENGTH = 64
CREATOR_COLUMNS = ("handle", "email", "country")
MAX_HANDLE_LENGTH = 100
MAX_NAME_LENGTH = 200
MAX_BATCH_NAME_LENGTH = 200
NOT_UTF8 = "the file is not UTF-8 text"
# A report lists this many errors (and as many duplicates); the rest are only counted, so a
# huge file of bad rows costs no more memory than a good one.
MAX_LISTED_ISSUES = 1000
# Line numbers of codes also held by another program kept in a report (all are counted).
MAX_LINES_LISTED = MAX_LISTED_ISSUES
# No line is held longer than this, its line end (LF, CR or CR LF) counted as one character (a row
# of a real list is a few hundred characters): a longer one is read past, never held whole.
MAX_LINE_CHARS = 100_000
# What a codes file may be headed with; the first line of a file without one of these is a code.
KNOWN_CODE_HEADERS = ("code",)
# Words a header of a codes file is made of, known or not: a first line close to one of them
# is a header (see _header_like), never a code.
_HEADER_WORDS = ("code", "codes", "voucher", "vouchers", "coupon", "coupons", "promo", "promos",
                 "promocode", "promocodes", "key", "keys", "serial", "serials", "token", "tokens",
                 "value", "values", "redemption", "subscription", "gift", "card", "number")
_HEADER_CUTOFF = 0.8  # difflib ratio: "codes" ~ "code" 0.89, "CODX" ~ "code" 0.75
# Letters only: one or more words, joined by a space, an underscore or a dash.
_WORDS = re.compile(r"[^\W\d_]+(?:[ _-][^\W\d_]+)*")
# Never stored nor mailed: C0 and C1 control characters (NUL, tab, line breaks, escape, DEL, ...)
# and the Unicode line and paragraph separators. White space around a value is stripped first,
# so only what would be stored is checked.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# With errors="surrogateescape", each byte that is not UTF-8 decodes to one of these (valid UTF-8
# never does), so a bad line is found when it is read, with its own line number.
_UNDECODABLE = re.compile("[\udc80-\udcff]")

Progress = Callable[[int], None]  # called with the number of bytes read so far
# Called with the report just before an import commits, in its transaction: a write made there
# commits with the import or not at all (an exception rolls the import back).
BeforeCommit = Callable[["ImportReport"], None]


@dataclass(frozen=True)
class RowIssue:
    """What is wrong on a line: ``code`` and ``params`` are stable (scripts read them from
    ``--json``), ``reason`` is the same in English for the manager reading the report."""

    line: int
    field: str
    reason: str
    code: str = field(default="row_invalid", compare=False)
    params: dict = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "code": self.code,
                "params": dict(self.params), "reason": self.reason}


class IssueList(list):
    """The first ``limit`` issues; the rest are counted in ``not_listed``."""

    def __init__(self, issues=(), limit: int = MAX_LISTED_ISSUES) -> None:
        super().__init__()
        self.limit = limit
        self.not_listed = 0
        self.extend(issues)

    def append(self, issue: RowIssue) -> None:
        if len(self) < self.limit:
            super().append(issue)
        else:
            self.not_listed += 1

    def extend(self, issues) -> None:
        for issue in issues:
            self.append(issue)

    @property
    def total(self) -> int:
        return len(self) + self.not_listed


@dataclass
class ImportReport:
    imported: int = 0
    duplicate: int = 0
    invalid: int = 0
    errors: list[RowIssue] = field(default_factory=IssueList)
    duplicates: list[RowIssue] = field(default_factory=IssueList)
    committed: bool = False
    batch_id: int | None = None
    # Codes imported that another program holds too: not an error (a partner may sell one
    # batch to two programs), but worth a manager's look. Lines: the first MAX_LINES_LISTED.
    in_other_programs: int = 0
    in_other_programs_lines: list[int] = field(default_factory=list)
    # A dry run of codes: the code of each line listed above, masked (``codes.mask_code``).
    masked_codes: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = {
            "imported": self.imported,
            "duplicate": self.duplicate,
            "invalid": self.invalid,
            "committed": self.committed,
            "errors": [e.as_dict() for e in self.errors],
            "errors_not_listed": _not_listed(self.errors),
            "duplicates": [d.as_dict() for d in self.duplicates],
            "duplicates_not_listed": _not_listed(self.duplicates),
        }
        if self.in_other_programs:
            data["in_other_programs"] = self.in_other_programs
            data["in_other_programs_lines"] = list(self.in_other_programs_lines)
        if self.batch_id is not None:
            data["batch_id"] = self.batch_id
        if self.masked_codes:
            data["masked_codes"] = {str(line): m for line, m in self.masked_codes.items()}
        return data

    @property
    def rows(self) -> int:
        """The rows of the file that were read (blank lines aside)."""
        return self.imported + self.duplicate + self.invalid


def _not_listed(issues: list[RowIssue]) -> int:
    return getattr(issues, "not_listed", 0)


class FileRejected(InvalidInput):
    """The file as a whole cannot be read (empty, wrong header, not UTF-8): nothing imported."""

    def __init__(self, line: int, field: str, reason: str, *, code: str = "file_rejected",
                 **params) -> None:
        super().__init__(f"line {line}, {field}: {reason}", field=field, code=code,
                         line=line, **params)
        self.issue = RowIssue(line, field, reason, code, params)


class _CountingReader(io.RawIOBase):
    """A raw stream that counts the bytes read through it, for progress bars."""

    def __init__(self, raw: BinaryIO, progress: Progress | None) -> None:
        self._raw = raw
        self._progress = progress
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self._raw.readinto(buffer) or 0
        self.bytes_read += n
        if self._progress and n:
            self._progress(self.bytes_read)
        return n


def _open_text(binary: BinaryIO, progress: Progress | None) -> io.TextIOWrapper:
    # utf-8-sig drops a byte-order mark; newline="" lets csv see CR LF as one line ending.
    # Decoding errors are caught per line (see _UNDECODABLE): the decoder works on 8 KiB chunks,
    # so a strict decoder would blame whichever line happened to start the chunk.
    counting = io.BufferedReader(_CountingReader(binary, progress), buffer_size=64 * 1024)
    return io.TextIOWrapper(counting, encoding="utf-8-sig", errors="surrogateescape",
                            newline="")


class _LineTooLong(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _line_too_long(line: int) -> FileRejected:
    return FileRejected(line, "file", f"line longer than {MAX_LINE_CHARS:,} characters",
                        code="line_too_long", limit=MAX_LINE_CHARS)


class _Lines:
    """The file's lines, each at most MAX_LINE_CHARS characters in memory; ``number`` is the
    line last read. Iterated (as csv.reader does), a longer line raises _LineTooLong. A line
    with bytes that are not UTF-8 rejects the file, with its number."""

    def __init__(self, text: io.TextIOWrapper, first_line: int = 1) -> None:
        self._text = text
        self._readline = text.readline
        self.number = first_line - 1
        self._pending = ""  # a character read ahead, after a CR at the limit: the next line's
        self._pushed = ""  # a piece read by __next__ that its fast path does not handle

    def _piece(self) -> str:
        if self._pushed:
            piece, self._pushed = self._pushed, ""
            if len(piece) < MAX_LINE_CHARS:
                return piece
        elif not self._pending:
            piece = self._readline(MAX_LINE_CHARS)
        else:
            piece, self._pending = self._pending, ""
            if piece == "\r":  # a line "\r", or "\r\n"
                after = self._text.read(1)
                if after == "\n":
                    return "\r\n"
                self._pending = after
                return piece
            if piece != "\n":
                piece += self._readline(MAX_LINE_CHARS - 1)
        if len(piece) == MAX_LINE_CHARS and piece[-1] == "\r":
            # The limit fell between a CR and what follows: a LF there ends this same line.
            after = self._text.read(1)
            if after == "\n":
                return piece + after
            self._pending = after
        return piece

    def read(self) -> tuple[str, bool] | None:
        """(the next line, whether it is whole), or None at the end of the file."""
        line = self._piece()
        if not line:
            return None
        self.number += 1
        if _UNDECODABLE.search(line):
            raise FileRejected(self.number, "file", NOT_UTF8, code="not_utf8")
        if len(line) < MAX_LINE_CHARS or line[-1] in "\r\n":
            return line, True
        rest = self._piece()
        if not rest:  # exactly the limit, at the end of the file
            return line, True
        while len(rest) >= MAX_LINE_CHARS and rest[-1] not in "\r\n":
            rest = self._piece()  # read past the rest of the line
        return line, False

    def _short_line(self) -> str:
        """The common case, quickly: the next line if it is whole and shorter than the limit
        (numbered and checked), else "" (and read() goes on from where this left off)."""
        if self._pending:
            return ""
        line = self._readline(MAX_LINE_CHARS)
        if 0 < len(line) < MAX_LINE_CHARS:
            self.number += 1
            if _UNDECODABLE.search(line):
                raise FileRejected(self.number, "file", NOT_UTF8, code="not_utf8")
            return line
        self._pushed = line  # read() takes it as its first piece
        return ""

    def numbered(self) -> Iterator[tuple[int, str, bool]]:
        """(number, line, whether it is whole) for each line left."""
        while True:
            if line := self._short_line():
                yield self.number, line, True
                continue
            got = self.read()
            if got is None:
                return
            yield self.number, *got

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if line := self._short_line():
            return line
        got = self.read()
        if got is None:
            raise StopIteration
        line, whole = got
        if not whole:
            raise _LineTooLong(self.number)
        return line


def _control_issue(line: int, name: str, value: str) -> RowIssue | None:
    """A value holding a control character (see _CONTROL): never stored, mailed or echoed."""
    found = _CONTROL.search(value)
    if found is None:
        return None
    char = f"U+{ord(found.group()):04X}"
    return RowIssue(line, name, f"contains a control character ({char})",
                    "control_character", {"character": char})


def _check_header(line: int, columns: list[str]) -> None:
    """A header naming a column with a control character is no header: the file is rejected
    (and the name is never printed as it is)."""
    for column in columns:
        control = _control_issue(line, "header", column)
        if control is not None:
            raise FileRejected(line, "header", control.reason, code=control.code,
                               **control.params)


def _csv_rows(lines: _Lines) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, fields), skipping blank lines; a line too long or a row
    the CSV reader refuses rejects the file, with the line."""
    start = lines.number + 1
    try:
        for row in csv.reader(lines):
            if "".join(row).strip():  # not a blank line
                yield start, row
            start = lines.number + 1
    except _LineTooLong as exc:
        raise _line_too_long(exc.line) from None
    except csv.Error as exc:
        raise FileRejected(start, "file", f"unreadable CSV: {exc}", code="csv_unreadable",
                           detail=str(exc)) from exc


class _Writer:
    """Collects rows and writes them in chunks, unless an invalid row has been seen and the
    import is all-or-nothing (then it only keeps validating)."""

    def __init__(self, report: ImportReport, skip_invalid: bool, flush: Callable[[list], None]):
        self.report = report
        self.skip_invalid = skip_invalid
        self._flush = flush
        self.pending: list = []

    @property
    def writing(self) -> bool:
        return self.skip_invalid or self.report.invalid == 0

    def add(self, item) -> None:
        if not self.writing:
            return
        self.pending.append(item)
        if len(self.pending) >= WRITE_CHUNK:
            self.flush()

    def flush(self) -> None:
        if self.pending and self.writing:
            self._flush(self.pending)
        self.pending = []


def _invalid(report: ImportReport, issues: list[RowIssue]) -> None:
    report.invalid += 1
    report.errors.extend(issues)


def _finish(session: Session, report: ImportReport, skip_invalid: bool,
            before_commit: BeforeCommit | None = None) -> ImportReport:
    if report.invalid and not skip_invalid:
        session.rollback()
        report.imported = 0
        report.in_other_programs, report.in_other_programs_lines = 0, []
        report.committed = False
        report.batch_id = None
    else:
        if before_commit is not None:  # the caller's last write, in the import's transaction
            before_commit(report)
        session.commit()
        report.committed = True
    return report


def _reported(session: Session, report: ImportReport) -> ImportReport:
    """A dry run's end: nothing was written, the transaction (reads only) ends."""
    session.rollback()
    report.committed = False
    return report


# --------------------------------------------------------------------------- creators


def _rolled_back_on_error(do_import):
    """Nothing of an import that stopped half-way (a rejected file) stays in the session."""

    @functools.wraps(do_import)
    def wrapper(session: Session, **kwargs) -> ImportReport:
        try:
            return do_import(session, **kwargs)
        except BaseException:
            session.rollback()
            raise

    return wrapper


@_rolled_back_on_error
def import_creators(
    session: Session,
    *,
    program: Program,
    stream: BinaryIO,
    filename: str = "-",
    skip_invalid: bool = False,
    progress: Progress | None = None,
    actor: str,
    dry_run: bool = False,
    before_commit: BeforeCommit | None = None,
) -> ImportReport:
    """Import an eligibility list: CSV with header ``handle,email,country`` (``name`` optional).

    A person already known (same normalised email) is reused; one already on this program's list
    counts as a duplicate, as does a second row with the same email in the file.
    """
    report = ImportReport()
    program_id = program.id
    if not dry_run:
        begin_write(session)
    text = _open_text(stream, progress)
    rows = _csv_rows(_Lines(text))
    first = next(rows, None)
    if first is None:
        raise FileRejected(1, "header", "the file is empty: expected a header line "
                                        "'handle,email,country' (and optionally 'name')",
                           code="file_empty", expected="handle,email,country")
    header_line, header = first
    columns = [h.strip().lower() for h in header]
    _check_header(header_line, columns)
    missing = [c for c in CREATOR_COLUMNS if c not in columns]
    if missing:
        raise FileRejected(
            header_line, "header",
            f"missing column(s) {', '.join(missing)}; expected 'handle,email,country' "
            f"(and optionally 'name'), found {','.join(columns)!r}",
            code="header_missing_columns", missing=missing, found=columns,
        )
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise FileRejected(header_line, "header", f"column(s) named twice: {', '.join(repeated)}",
                           code="header_repeated_columns", repeated=repeated)
    index = {name: columns.index(name) for name in (*CREATOR_COLUMNS, "name") if name in columns}

    seen: dict[str, int] = {}
    write = _check_creators if dry_run else _write_creators
    writer = _Writer(report, skip_invalid or dry_run,
                     lambda chunk: write(session, program_id, chunk, report))

    for line, row in rows:
        issues, creator = _creator_row(line, row, len(columns), index)
        if issues:
            _invalid(report, issues)
            continue
        handle, email, country, name = creator
        if email in seen:
            report.duplicate += 1
            report.duplicates.append(RowIssue(line, "email", f"same email as line {seen[email]}",
                                              "duplicate_in_file", {"first_line": seen[email]}))
            continue
        seen[email] = line
        writer.add((line, handle, email, country, name or None))
    writer.flush()

    if dry_run:
        return _reported(session, report)
    if report.imported or not report.invalid:
        audit.record(session, audit.event(
            actor=actor, action="creators.imported", object_type="program",
            object_id=program_id, program_id=program_id,
            detail={"file": filename, "imported": report.imported,
                    "duplicate": report.duplicate, "invalid": report.invalid}))
    return _finish(session, report, skip_invalid, before_commit)


def _wrong_width(line: int, width: int, found: int) -> RowIssue:
    return RowIssue(line, "row", f"expected {width} fields, found {found}", "row_width",
                    {"expected": width, "found": found})


def _too_long(line: int, name: str, limit: int) -> RowIssue:
    return RowIssue(line, name, f"longer than {limit} characters", "too_long", {"limit": limit})


def _creator_row(line: int, row: list[str], width: int, index: dict[str, int]):
    """(issues, None) for an invalid row, else ([], (handle, email, country, name or None))."""
    if len(row) != width:
        return [_wrong_width(line, width, len(row))], None
    issues: list[RowIssue] = []
    values = {name: row[i].strip() for name, i in index.items()}
    for name, value in values.items():
        control = _control_issue(line, name, value)
        if control is not None:
            issues.append(control)
    if issues:  # nothing else is said of a value that holds a control character
        return issues, None
    handle = values["handle"]
    if not handle:
        issues.append(RowIssue(line, "handle", "handle is empty", "handle_empty"))
    elif len(handle) > MAX_HANDLE_LENGTH:
        issues.append(_too_long(line, "handle", MAX_HANDLE_LENGTH))
    email = country = None
    try:
        email = normalise_email(values["email"])
    except InvalidInput as exc:
        issues.append(RowIssue(line, "email", str(exc), exc.code, exc.params))
    try:
        country = normalise_country(values["country"])
    except InvalidInput as exc:
        issues.append(RowIssue(line, "country", str(exc), exc.code,
                               {"value": values["country"][:20]}))
    name = values.get("name", "")
    if len(name) > MAX_NAME_LENGTH:
        issues.append(_too_long(line, "name", MAX_NAME_LENGTH))
    if issues:
        return issues, None
    return [], (handle, email, country, name or None)


def _write_creators(session: Session, program_id: int, chunk: list, report: ImportReport) -> None:
    now = datetime.now(UTC)
    emails = [item[2] for item in chunk]
    known = dict(
        session.execute(sa.select(Creator.email, Creator.id).where(Creator.email.in_(emails))).all()
    )
    new_rows = [
        {"email": email, "handle": handle, "country": country, "name": name,
         "login_nonce": 0, "created_at": now}
        for (_line, handle, email, country, name) in chunk
        if email not in known
    ]
    if new_rows:
        inserted = session.execute(
            sa.insert(Creator).returning(Creator.email, Creator.id), new_rows
        ).all()
        known.update(dict(inserted))
    ids = [known[email] for email in emails]
    already = set(
        session.execute(
            sa.select(Eligibility.creator_id).where(
                Eligibility.program_id == program_id, Eligibility.creator_id.in_(ids)
            )
        ).scalars()
    )
    eligibility_rows = []
    for (line, *_), creator_id in zip(chunk, ids, strict=True):
        if creator_id in already:
            report.duplicate += 1
            report.duplicates.append(
                RowIssue(line, "email", "already on this program's eligibility list",
                         "already_listed"))
            continue
        eligibility_rows.append({"program_id": program_id, "creator_id": creator_id,
                                 "created_at": now})
    if eligibility_rows:
        session.execute(sa.insert(Eligibility), eligibility_rows)
        report.imported += len(eligibility_rows)


def _check_creators(session: Session, program_id: int, chunk: list,
                    report: ImportReport) -> None:
    """A dry run's ``_write_creators``: the rows already on the list are duplicates, the rest
    would be imported."""
    emails = [item[2] for item in chunk]
    listed = set(session.execute(
        sa.select(Creator.email).join(Eligibility, Eligibility.creator_id == Creator.id)
        .where(Eligibility.program_id == program_id, Creator.email.in_(emails))).scalars())
    for line, _handle, email, *_ in chunk:
        if email in listed:
            report.duplicate += 1
            report.duplicates.append(
                RowIssue(line, "email", "already on this program's eligibility list",
                         "already_listed"))
        else:
            report.imported += 1


# --------------------------------------------------------------------------- codes


def describe_code_pattern(pattern: str) -> str:
    if pattern == DEFAULT_CODE_PATTERN:
        return "4 to 64 ASCII letters, digits and dashes"
    return f"the program's code format {pattern}"


@_rolled_back_on_error
def import_codes(
    session: Session,
    *,
    program: Program,
    stream: BinaryIO,
    filename: str = "-",
    batch_name: str | None = None,
    expires_on: date | None,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    actor: str,
    today: date | None = None,
    dry_run: bool = False,
    before_commit: BeforeCommit | None = None,
) -> ImportReport:
    """Import one batch of codes: a CSV with a ``code`` column, or one code per line.

    ``expires_on`` is the last day the codes can be redeemed, given by every caller: None is
    an explicit "no expiry" (it can be changed later, ``codes.set_batch_expiry``).

    Codes are stripped of surrounding white space and never altered otherwise. A code already
    held by this program, or repeated in the file, counts as a duplicate. The program's stock
    counter goes up by the codes inserted, in the import's transaction.
    """
    today = today or datetime.now(UTC).date()
    if expires_on is not None and expires_on < today:
        raise InvalidInput(f"expiry date {expires_on.isoformat()} is in the past", field="expires")
    if batch_name is not None and len(batch_name) > MAX_BATCH_NAME_LENGTH:
        raise InvalidInput(f"batch name is longer than {MAX_BATCH_NAME_LENGTH} characters",
                           field="batch-name")
    if batch_name is not None and _CONTROL.search(batch_name):
        raise InvalidInput("batch name contains a control character", field="batch-name",
                           code="control_character")
    filename = _CONTROL.sub("\ufffd", filename)  # a file's name is stored and shown
    report = ImportReport()
    program_id = program.id
    if not dry_run:
        begin_write(session)
    code_cipher.check_stored_codes(session.connection())
    pattern = re.compile(program.code_pattern)
    format_text = describe_code_pattern(program.code_pattern)
    text = _open_text(stream, progress)

    entries = _code_entries(text, report)
    if dry_run:
        return _dry_run_codes(session, program_id, entries, pattern, format_text, report)

    batch = CodeBatch(
        program_id=program_id,
        name=batch_name or f"{Path(filename).name[:160]} {datetime.now(UTC):%Y-%m-%d %H:%M}",
        source_filename=Path(filename).name,
        expires_on=expires_on,
    )
    session.add(batch)
    session.flush()
    batch_id = batch.id
    writer = _Writer(report, skip_invalid,
                     lambda chunk: _write_codes(session, program_id, batch_id, chunk, report))
    for entry in _codes_passing_rows(entries, pattern, format_text, report):
        writer.add(entry)
    writer.flush()

    if report.imported == 0:
        session.delete(batch)
    else:
        batch.code_count = report.imported
        report.batch_id = batch_id
        audit.record(session, audit.event(
            actor=actor, action="codes.imported", object_type="code_batch",
            object_id=batch_id, program_id=program_id,
            detail={"file": Path(filename).name, "batch": batch.name,
                    "imported": report.imported, "duplicate": report.duplicate,
                    "invalid": report.invalid, "expires_on": expires_on}))
    if report.imported and writer.writing:
        # The import commits (no invalid row, or they are skipped). Last, just before the
        # commit: the program's row stays locked only this long.
        stock.move_counter(session.connection(), program_id, report.imported,
                           batch_id=batch_id)
    _finish(session, report, skip_invalid, before_commit)
    if report.committed and report.imported:
        dispatch.allocate_program(program_id)  # new stock serves the waitlist
    return report


def _dry_run_codes(session: Session, program_id: int, entries, pattern: re.Pattern,
                   format_text: str, report: ImportReport) -> ImportReport:
    """``import_codes`` with nothing written: every row checked as the import checks it (invalid
    rows as if skipped), codes looked up by fingerprint. Each code listed is masked."""
    writer = _Writer(report, True, lambda chunk: _check_codes(session, program_id, chunk, report))
    masked = functools.partial(_mask, report)
    for entry in _codes_passing_rows(entries, pattern, format_text, report, rejected=masked):
        writer.add(entry)
    writer.flush()
    return _reported(session, report)


def _codes_passing_rows(entries, pattern: re.Pattern, format_text: str, report: ImportReport,
                        rejected=None):
    """The (line, code) of the file that pass the row checks, each code once (its first line):
    an invalid row and a repeat inside the file are counted and listed in ``report``, and given
    to ``rejected(line, code)`` if there is one (a dry run masks them for its report) — except a
    row with a control character, which is never echoed, even masked."""
    seen: dict[str, int] = {}
    for line, value in entries:
        if not value:
            continue
        issue = _code_issue(line, value, pattern, format_text)
        if issue is not None:
            _invalid(report, [issue])
            if rejected is not None and issue.code != "control_character":
                rejected(line, value)
            continue
        if value in seen:
            report.duplicate += 1
            report.duplicates.append(RowIssue(line, "code", f"same code as line {seen[value]}",
                                              "duplicate_in_file", {"first_line": seen[value]}))
            if rejected is not None:
                rejected(line, value)
            continue
        seen[value] = line
        yield line, value


# Masked codes a dry run's report keeps: one for each line it lists, at most.
MAX_MASKED = 3 * MAX_LISTED_ISSUES


def _mask(report: ImportReport, line: int, value: str) -> None:
    if len(report.masked_codes) < MAX_MASKED:
        report.masked_codes[line] = mask_code(value)


def _check_codes(session: Session, program_id: int, chunk: list, report: ImportReport) -> None:
    """A dry run's ``_write_codes``: the codes this program holds are duplicates, the others
    would be imported; those other programs hold are counted. One look-up by fingerprint
    (the unique index, fingerprint first) per chunk."""
    values = [value for _line, value in chunk]
    fingerprints = code_cipher.cipher().fingerprints(values)
    here: set[bytes] = set()
    elsewhere: set[bytes] = set()
    for fingerprint, holder in session.execute(
            sa.select(Code.fingerprint, Code.program_id)
            .where(Code.fingerprint.in_(fingerprints))):
        (here if holder == program_id else elsewhere).add(bytes(fingerprint))
    for (line, value), fp in zip(chunk, fingerprints, strict=True):
        if fp in here:
            report.duplicate += 1
            report.duplicates.append(RowIssue(line, "code", "already in this program's stock",
                                              "already_in_stock"))
            _mask(report, line, value)
            continue
        report.imported += 1
        if fp in elsewhere:
            report.in_other_programs += 1
            if len(report.in_other_programs_lines) < MAX_LINES_LISTED:
                report.in_other_programs_lines.append(line)
                _mask(report, line, value)


def _code_entries(text: io.TextIOWrapper, report: ImportReport) -> Iterator[tuple[int, str]]:
    """(line, code stripped) for each code of a codes file: a CSV headed by a known header
    (its column), or one code per line. A first line that looks like a header but is not a
    known one rejects the file (see _header_like). Rows found invalid on the way are put in
    the report."""
    lines = _Lines(text)
    first = _next_filled(lines)
    if first is None:
        raise FileRejected(1, "file", "the file is empty: expected codes, one per line, "
                                      "or a CSV with a 'code' column", code="file_empty")
    first_number, first_text, whole = first
    cells: list[str] = []
    if whole:
        try:
            cells = [c.strip() for c in next(csv.reader([first_text]), [])]
        except csv.Error:
            cells = []
    lowered = [c.lower() for c in cells]
    for known in KNOWN_CODE_HEADERS:
        if known in lowered:
            return _csv_code_entries(lines, lowered.index(known), len(cells), report)
    second = _next_filled(lines)
    if whole and _header_like(cells, second[1].strip() if second else None):
        found = first_text.strip()[:40]
        headers = ", ".join(repr(h) for h in KNOWN_CODE_HEADERS)
        raise FileRejected(
            first_number, "header",
            f"{found!r} looks like a header, but the known header is {headers}: name the "
            f"column {KNOWN_CODE_HEADERS[0]!r}, or, if {found!r} is a code, put a line "
            f"{KNOWN_CODE_HEADERS[0]!r} above it",
            code="header_unknown", found=found, known=list(KNOWN_CODE_HEADERS))
    head = [first] if second is None else [first, second]
    return _plain_code_entries(itertools.chain(head, lines.numbered()), report)


def _next_filled(lines: _Lines) -> tuple[int, str, bool] | None:
    """The next line that is not blank, as (number, text, whole), or None at the end."""
    for number, text, whole in lines.numbered():
        if text.strip() or not whole:
            return number, text, whole
    return None


def _header_like(cells: list[str], next_code: str | None) -> bool:
    """Whether a codes file's first line (split as CSV) is a header rather than a code.

    Only letters (words joined by a space, underscore or dash) can be a header; then it is one
    when it has several cells (a plain file holds one code a line), when a word of it is close
    to a word headers are made of (``codes``, ``Voucher``, ``coupon_code``, ``promo-code``), or,
    with no dash in it, when it is not shaped like the code on the next line (``Gutschein``
    over ``HS-1234``). An all-letters code over codes of its shape (``ABCDEFGH`` over
    ``QWERTYUI``) stays a code, as does ``HS-abcd`` over ``HS-ABCD``.
    """
    words = [c for c in cells if c]
    if not words or not all(_WORDS.fullmatch(w) for w in words):
        return False
    if len(words) > 1:
        return True
    [word] = words
    for part in re.split(r"[ _-]", word.lower()):
        if difflib.get_close_matches(part, _HEADER_WORDS, n=1, cutoff=_HEADER_CUTOFF):
            return True
    return ("-" not in word and next_code is not None
            and _shape(word) != _shape(next_code))


def _shape(text: str) -> str:
    """Runs of capitals, small letters, digits and other characters: "HS-ab12" -> "A-a9"."""
    runs: list[str] = []
    for char in text:
        kind = ("A" if char.isupper() else "a" if char.isalpha()
                else "9" if char.isdigit() else char)
        if not runs or runs[-1] != kind:
            runs.append(kind)
    return "".join(runs)


def _plain_code_entries(numbered, report: ImportReport) -> Iterator[tuple[int, str]]:
    for number, raw, whole in numbered:
        if not whole:
            _invalid(report, [_too_long(number, "code", MAX_CODE_LENGTH)])
            continue
        yield number, raw.strip()


def _csv_code_entries(lines: _Lines, column: int, width: int, report: ImportReport):
    for line, row in _csv_rows(lines):
        if len(row) != width:
            _invalid(report, [_wrong_width(line, width, len(row))])
            continue
        yield line, row[column].strip()


def _code_issue(line: int, value: str, pattern: re.Pattern, format_text: str) -> RowIssue | None:
    """What is wrong with a code (stripped), if anything."""
    if len(value) <= MAX_CODE_LENGTH and pattern.fullmatch(value) and not _CONTROL.search(value):
        return None  # the common case, first
    control = _control_issue(line, "code", value)
    if control is not None:
        return control
    if len(value) > MAX_CODE_LENGTH:
        return _too_long(line, "code", MAX_CODE_LENGTH)
    if not pattern.fullmatch(value):
        return RowIssue(line, "code", f"does not match {format_text}", "code_format",
                        {"pattern": pattern.pattern})
    return None


# PostgreSQL: a chunk of codes is one statement with two array parameters (a statement of 1,000
# rows of VALUES cost more to build and parse than to run). It inserts what this program does not
# hold yet (ON CONFLICT on the fingerprint) and, in the same round trip, names the codes that
# other programs hold: one index probe per code (LATERAL .. LIMIT 1), never a join that a plan
# may choose to make by scanning every code.
_PG_WRITE_CODES = sa.text("""
WITH new (value_encrypted, fingerprint) AS (
    SELECT * FROM unnest(CAST(:b_tokens AS bytea[]), CAST(:b_fingerprints AS bytea[]))),
inserted AS (
    INSERT INTO code (program_id, batch_id, status, value_encrypted, key_id, fingerprint)
    SELECT :b_program, :b_batch, 'available', value_encrypted, :b_key, fingerprint FROM new
    ON CONFLICT (fingerprint, program_id) DO NOTHING
    RETURNING fingerprint)
SELECT fingerprint, true AS inserted FROM inserted
UNION ALL
SELECT new.fingerprint, false FROM new CROSS JOIN LATERAL (
    SELECT 1 FROM code WHERE code.fingerprint = new.fingerprint
    AND code.program_id <> :b_program LIMIT 1) AS elsewhere
""")


def _write_codes(session: Session, program_id: int, batch_id: int, chunk: list,
                 report: ImportReport) -> None:
    # Codes are compared by fingerprint: the unique (fingerprint, program_id) index finds the
    # codes already in stock in the statement that writes the rest (no SELECT .. IN first).
    cipher = code_cipher.cipher()
    values = [value for _line, value in chunk]
    fingerprints = cipher.fingerprints(values)
    tokens = cipher.encrypt_many(values)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        found = conn.execute(_PG_WRITE_CODES, {
            "b_tokens": tokens, "b_fingerprints": fingerprints, "b_program": program_id,
            "b_batch": batch_id, "b_key": cipher.newest_key_id}).all()
        inserted = {bytes(fp) for fp, new in found if new}
        elsewhere = {bytes(fp) for fp, new in found if not new}
    else:
        inserted = set(conn.execute(
            sqlite.insert(Code).on_conflict_do_nothing(
                index_elements=["fingerprint", "program_id"]).returning(Code.fingerprint),
            [{"program_id": program_id, "batch_id": batch_id, "value_encrypted": token,
              "key_id": cipher.newest_key_id, "fingerprint": fp,
              "status": CodeStatus.available.value}
             for token, fp in zip(tokens, fingerprints, strict=True)],
        ).scalars())
        elsewhere = set(conn.execute(
            sa.select(Code.fingerprint).distinct()
            .where(Code.fingerprint.in_(fingerprints), Code.program_id != program_id)).scalars())
    for (line, _value), fp in zip(chunk, fingerprints, strict=True):
        if fp not in inserted:
            report.duplicate += 1
            report.duplicates.append(RowIssue(line, "code", "already in this program's stock",
                                              "already_in_stock"))
        elif fp in elsewhere:
            report.in_other_programs += 1
            if len(report.in_other_programs_lines) < MAX_LINES_LISTED:
                report.in_other_programs_lines.append(line)
    report.imported += len(inserted)


# --------------------------------------------------------------------------- one creator

CREATOR_ADDED = "creator.added"


def add_creator(session: Session, *, program_id: int, email: str, handle: str, country: str,
                name: str | None = None, actor: str) -> int:
    """Put one creator on a program's list (the console's "add"): the row is checked as an
    import's row is (``_creator_row``) and written as one (``_write_creators``); returns the
    creator's id. Refused (InvalidInput, with the field) for a bad value, (Conflict) when they
    are on the list already."""
    index = {"handle": 0, "email": 1, "country": 2, "name": 3}
    issues, row = _creator_row(1, [handle or "", email or "", country or "", name or ""],
                               4, index)
    if issues:
        issue = issues[0]
        raise InvalidInput(issue.reason, field=issue.field, code=issue.code, **issue.params)
    handle, address, country, name = row
    report = ImportReport()
    begin_write(session)
    try:
        _write_creators(session, program_id, [(1, handle, address, country, name)], report)
        if report.duplicate:
            raise Conflict(f"{address} is already on this program's list", email=address,
                           code="already_listed")
        creator_id = session.execute(
            sa.select(Creator.id).where(Creator.email == address)).scalar_one()
        audit.record(session, audit.event(
            actor=actor, action=CREATOR_ADDED, object_type="creator", object_id=creator_id,
            program_id=program_id, detail={"country": country}))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return creator_id
