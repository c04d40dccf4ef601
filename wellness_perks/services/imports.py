"""Importing the eligibility list and code batches from files.

Both imports stream their file (never read whole into memory), validate every row, and report
each rejected row with its line number, field and reason. They are all-or-nothing: one invalid
row and nothing is written, unless the caller asks to skip invalid rows.
"""

from __future__ import annotations

import csv
import functools
import io
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
from .countries import normalise_country
from .emails import normalise_email
from .errors import InvalidInput

WRITE_CHUNK = 1000
# Line numbers of codes also held by another program kept in a report (all are counted).
MAX_LINES_LISTED = 1000
MAX_CODE_LENGTH = 64
CREATOR_COLUMNS = ("handle", "email", "country")
MAX_HANDLE_LENGTH = 100
MAX_NAME_LENGTH = 200
MAX_BATCH_NAME_LENGTH = 200
NOT_UTF8 = "the file is not UTF-8 text"
# With errors="surrogateescape", each byte that is not UTF-8 decodes to one of these (valid UTF-8
# never does), so a bad line is found when it is read, with its own line number.
_UNDECODABLE = re.compile("[\udc80-\udcff]")

Progress = Callable[[int], None]  # called with the number of bytes read so far


@dataclass(frozen=True)
class RowIssue:
    line: int
    field: str
    reason: str

    def as_dict(self) -> dict:
        return {"line": self.line, "field": self.field, "reason": self.reason}


@dataclass
class ImportReport:
    imported: int = 0
    duplicate: int = 0
    invalid: int = 0
    errors: list[RowIssue] = field(default_factory=list)
    duplicates: list[RowIssue] = field(default_factory=list)
    committed: bool = False
    batch_id: int | None = None
    # Codes imported that another program holds too: not an error (a partner may sell one
    # batch to two programs), but worth a manager's look. Lines: the first MAX_LINES_LISTED.
    in_other_programs: int = 0
    in_other_programs_lines: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        data = {
            "imported": self.imported,
            "duplicate": self.duplicate,
            "invalid": self.invalid,
            "committed": self.committed,
            "errors": [e.as_dict() for e in self.errors],
            "duplicates": [d.as_dict() for d in self.duplicates],
        }
        if self.in_other_programs:
            data["in_other_programs"] = self.in_other_programs
            data["in_other_programs_lines"] = list(self.in_other_programs_lines)
        if self.batch_id is not None:
            data["batch_id"] = self.batch_id
        return data


class FileRejected(InvalidInput):
    """The file as a whole cannot be read (empty, wrong header, not UTF-8): nothing imported."""

    def __init__(self, line: int, field: str, reason: str) -> None:
        super().__init__(f"line {line}, {field}: {reason}", field=field)
        self.issue = RowIssue(line, field, reason)


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


def _check_utf8(line: int, *texts: str) -> None:
    if any(_UNDECODABLE.search(text) for text in texts):
        raise FileRejected(line, "file", NOT_UTF8)


def _csv_rows(reader, first_line: int = 1) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, fields), skipping blank lines; turns decoding trouble into
    FileRejected with the line it happened on."""
    line = first_line - 1
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise FileRejected(start, "file", f"unreadable CSV: {exc}") from exc
        line = first_line - 1 + reader.line_num
        _check_utf8(start, *row)
        if not row or all(not cell.strip() for cell in row):
            continue
        yield start, row


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


def _finish(session: Session, report: ImportReport, skip_invalid: bool) -> ImportReport:
    if report.invalid and not skip_invalid:
        session.rollback()
        report.imported = 0
        report.in_other_programs, report.in_other_programs_lines = 0, []
        report.committed = False
        report.batch_id = None
    else:
        session.commit()
        report.committed = True
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
) -> ImportReport:
    """Import an eligibility list: CSV with header ``handle,email,country`` (``name`` optional).

    A person already known (same normalised email) is reused; one already on this program's list
    counts as a duplicate, as does a second row with the same email in the file.
    """
    report = ImportReport()
    program_id = program.id
    begin_write(session)
    text = _open_text(stream, progress)
    rows = _csv_rows(csv.reader(text))
    first = next(rows, None)
    if first is None:
        raise FileRejected(1, "header", "the file is empty: expected a header line "
                                        "'handle,email,country' (and optionally 'name')")
    header_line, header = first
    columns = [h.strip().lower() for h in header]
    missing = [c for c in CREATOR_COLUMNS if c not in columns]
    if missing:
        raise FileRejected(
            header_line, "header",
            f"missing column(s) {', '.join(missing)}; expected 'handle,email,country' "
            f"(and optionally 'name'), found {','.join(columns)!r}",
        )
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise FileRejected(header_line, "header", f"column(s) named twice: {', '.join(repeated)}")
    index = {name: columns.index(name) for name in (*CREATOR_COLUMNS, "name") if name in columns}

    seen: dict[str, int] = {}
    writer = _Writer(report, skip_invalid,
                     lambda chunk: _write_creators(session, program_id, chunk, report))

    for line, row in rows:
        if len(row) != len(columns):
            _invalid(report, [RowIssue(line, "row", f"expected {len(columns)} fields, "
                                                    f"found {len(row)}")])
            continue
        issues: list[RowIssue] = []
        handle = row[index["handle"]].strip()
        if not handle:
            issues.append(RowIssue(line, "handle", "handle is empty"))
        elif len(handle) > MAX_HANDLE_LENGTH:
            issues.append(RowIssue(line, "handle", f"longer than {MAX_HANDLE_LENGTH} characters"))
        email = None
        try:
            email = normalise_email(row[index["email"]])
        except InvalidInput as exc:
            issues.append(RowIssue(line, "email", str(exc)))
        country = None
        try:
            country = normalise_country(row[index["country"]])
        except InvalidInput as exc:
            issues.append(RowIssue(line, "country", str(exc)))
        name = row[index["name"]].strip() if "name" in index else ""
        if len(name) > MAX_NAME_LENGTH:
            issues.append(RowIssue(line, "name", f"longer than {MAX_NAME_LENGTH} characters"))
        if issues:
            _invalid(report, issues)
            continue
        if email in seen:
            report.duplicate += 1
            report.duplicates.append(RowIssue(line, "email", f"same email as line {seen[email]}"))
            continue
        seen[email] = line
        writer.add((line, handle, email, country, name or None))
    writer.flush()

    if report.imported or not report.invalid:
        audit.record(session, audit.event(
            actor=actor, action="creators.imported", object_type="program",
            object_id=program_id, program_id=program_id,
            detail={"file": filename, "imported": report.imported,
                    "duplicate": report.duplicate, "invalid": report.invalid}))
    return _finish(session, report, skip_invalid)


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
                RowIssue(line, "email", "already on this program's eligibility list"))
            continue
        eligibility_rows.append({"program_id": program_id, "creator_id": creator_id,
                                 "created_at": now})
    if eligibility_rows:
        session.execute(sa.insert(Eligibility), eligibility_rows)
        report.imported += len(eligibility_rows)


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
    expires_on: date | None = None,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    actor: str,
    today: date | None = None,
) -> ImportReport:
    """Import one batch of codes: a CSV with a ``code`` column, or one code per line.

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
    report = ImportReport()
    program_id = program.id
    begin_write(session)
    code_cipher.check_stored_codes(session.connection())
    pattern = re.compile(program.code_pattern)
    format_text = describe_code_pattern(program.code_pattern)
    text = _open_text(stream, progress)

    first_number = 1
    first_line = text.readline()
    while first_line and not first_line.strip():  # leading blank lines
        first_number += 1
        first_line = text.readline()
    if first_line == "":
        raise FileRejected(1, "file", "the file is empty: expected codes, one per line, "
                                      "or a CSV with a 'code' column")
    _check_utf8(first_number, first_line)
    header_cells = [c.strip().lower() for c in next(csv.reader([first_line]), [])]
    if "code" in header_cells:
        column = header_cells.index("code")
        width = len(header_cells)
        entries = _csv_code_entries(csv.reader(text), column, width, report, first_number + 1)
    else:
        entries = _plain_code_entries(text, first_line, first_number)

    batch = CodeBatch(
        program_id=program_id,
        name=batch_name or f"{Path(filename).name[:160]} {datetime.now(UTC):%Y-%m-%d %H:%M}",
        source_filename=Path(filename).name,
        expires_on=expires_on,
    )
    session.add(batch)
    session.flush()
    batch_id = batch.id
    seen: dict[str, int] = {}
    writer = _Writer(report, skip_invalid,
                     lambda chunk: _write_codes(session, program_id, batch_id, chunk, report))
    for line, value in entries:
        if not value:
            continue
        if len(value) > MAX_CODE_LENGTH:
            _invalid(report, [RowIssue(line, "code",
                                       f"longer than {MAX_CODE_LENGTH} characters")])
            continue
        if not pattern.fullmatch(value):
            _invalid(report, [RowIssue(line, "code", f"does not match {format_text}")])
            continue
        if value in seen:
            report.duplicate += 1
            report.duplicates.append(RowIssue(line, "code", f"same code as line {seen[value]}"))
            continue
        seen[value] = line
        writer.add((line, value))
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
        stock.move_counter(session.connection(), program_id, report.imported)
    _finish(session, report, skip_invalid)
    if report.committed and report.imported:
        dispatch.allocate_program(program_id)  # new stock serves the waitlist
    return report


def _plain_code_entries(text: io.TextIOWrapper, first_line: str,
                        line: int) -> Iterator[tuple[int, str]]:
    yield line, first_line.strip()
    while True:
        raw = text.readline()
        if raw == "":
            return
        line += 1
        _check_utf8(line, raw)
        yield line, raw.strip()


def _csv_code_entries(reader, column: int, width: int, report: ImportReport, first_line: int):
    for line, row in _csv_rows(reader, first_line=first_line):
        if len(row) != width:
            _invalid(report, [RowIssue(line, "row", f"expected {width} fields, found {len(row)}")])
            continue
        yield line, row[column].strip()


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
            report.duplicates.append(RowIssue(line, "code", "already in this program's stock"))
        elif fp in elsewhere:
            report.in_other_programs += 1
            if len(report.in_other_programs_lines) < MAX_LINES_LISTED:
                report.in_other_programs_lines.append(line)
    report.imported += len(inserted)
