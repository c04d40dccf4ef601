"""Fuzzing both importers (``services/imports.py``): every file (arbitrary bytes; CSV made of
hostile cells: control characters, quotes, odd delimiters, byte-order marks, mixed line ends,
huge fields, bytes that are not UTF-8) ends in a located rejection of the file or in a report
whose issues are all located, never in an exception. When the import commits, what is stored
is exactly what a plain reading of the file says, and nothing it refused. On SQLite with the
larger budget, on PostgreSQL (which refuses a NUL outright) with a smaller one."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.conftest import _empty_tables
from wellness_perks.db import get_session
from wellness_perks.models import DEFAULT_CODE_PATTERN, Code, Creator, Eligibility
from wellness_perks.services import code_cipher, imports, programs
from wellness_perks.services.countries import COUNTRY_CODES
from wellness_perks.services.emails import normalise_email
from wellness_perks.services.errors import InvalidInput
from wellness_perks.services.imports import MAX_LINE_CHARS, FileRejected

EXAMPLES = {"sqlite": 120, "postgresql": 12}
LINE_BREAK = re.compile(r"\r\n|\r|\n")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
CODE = re.compile(DEFAULT_CODE_PATTERN)

SPECIAL = st.sampled_from(["\x00", "\t", "\r", "\n", "\r\n", '"', ",", ";", " ", "\ufeff",
                           "\u2028", "\x85", "\x1b", "\x7f", "\x0c", "é", "ß", "ا", "😀",
                           "=cmd|", "<b>"])
HOSTILE = st.lists(st.characters(exclude_categories=("Cs",)) | SPECIAL, max_size=8).map("".join)
HUGE = st.sampled_from([65, 131_073, MAX_LINE_CHARS + 1]).map(lambda n: "x" * n)


def _fuzz(backend):
    return settings(max_examples=EXAMPLES[backend], deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


def _quoted(cell: str, style: str) -> str:
    if style == "quoted":
        return '"' + cell.replace('"', '""') + '"'
    if style == "half-quoted":
        return '"' + cell
    return cell


def _cell(pick: int, strategy):
    return HUGE if pick == 0 else HOSTILE if pick < 20 else strategy


@st.composite
def csv_files(draw, header_cells, column_values: dict) -> bytes:
    """A CSV made of a header (drawn from ``header_cells``) and rows whose cells come from
    ``column_values`` by column name (or are hostile text), with drawn quoting, delimiters,
    line ends, BOM and encoding."""
    delimiter = draw(st.sampled_from([","] * 8 + [";", "\t", ", "]))
    header = draw(header_cells)
    lines = [delimiter.join(header)]
    strategies = [column_values.get(name.strip().lower(), HOSTILE) for name in header]
    for _ in range(draw(st.integers(0, 8))):
        cells = [draw(_cell(draw(st.integers(0, 199)), strategy)) for strategy in strategies]
        if draw(st.integers(0, 19)) == 0:
            cells = cells[:-1] if draw(st.booleans()) else [*cells, "extra"]
        style = draw(st.sampled_from(["plain"] * 6 + ["quoted"] * 3 + ["half-quoted"]))
        lines.append(delimiter.join(_quoted(c, style) for c in cells))
    if draw(st.integers(0, 5)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", " ", "\t"])))
    ends = [draw(st.sampled_from(["\n", "\r\n", "\r", "\n"])) for _ in lines]
    text = "".join(line + end for line, end in zip(lines, ends, strict=True))
    if draw(st.booleans()):
        text = text.rstrip("\r\n")  # no line end after the last line
    if draw(st.integers(0, 4)) == 0:
        text = "\ufeff" + text
    encoding = draw(st.sampled_from(["utf-8"] * 12 + ["latin-1", "utf-16", "broken"]))
    if encoding == "broken":
        data = text.encode()
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[at:]
    return text.encode(encoding, errors="replace")


ANY_BYTES = st.binary(max_size=300)
HANDLES = st.from_regex(r"@[a-z]{1,8}", fullmatch=True)
EMAILS = st.builds("{}@example.com".format, st.sampled_from(["ann", "Bob", "c.d", "ann"]))
COUNTRIES = st.sampled_from(["PK", "in", " BR ", "PK", "ZZ"])
NAMES = st.sampled_from(["", "Ann", "Zoë N", "=1+1", "<script>"])
CREATOR_FILES = st.integers(0, 4).flatmap(lambda pick: ANY_BYTES if pick == 0 else csv_files(
    st.sampled_from([["handle", "email", "country"], ["handle", "email", "country", "name"]] * 3
                    + [["email", "Handle ", "COUNTRY", "name", "note"], ["handle", "emails", "c"],
                       ["handle", "email", "country", "email"]]),
    {"handle": HANDLES, "email": EMAILS, "country": COUNTRIES, "name": NAMES}))
CODE_VALUES = st.from_regex(r"[A-Z]{2}-[A-Za-z0-9]{4}", fullmatch=True) | st.sampled_from(
    ["ABCDEFGH", "abc", "bad code", "HS-AAAA", "x" * 65])
CODE_FILES = st.integers(0, 4).flatmap(lambda pick: ANY_BYTES if pick == 0 else csv_files(
    st.sampled_from([["code"], ["Code ", "note"], ["note", "CODE"], ["codes"], ["Voucher"],
                     ["HS-AAAA-0001"], ["ABCDEFGH"], [""]]),
    {"code": CODE_VALUES, "codes": CODE_VALUES, "voucher": CODE_VALUES, "": CODE_VALUES,
     "hs-aaaa-0001": CODE_VALUES, "abcdefgh": CODE_VALUES}))


def _physical_lines(data: bytes) -> int:
    return len(re.split(rb"\r\n|\r|\n", data))


def _check_outcome(run, data: bytes, seen: Counter):
    """The report, or None for a rejected file; either way every issue is located. ``seen``
    counts the outcomes, for the run to show it reached each."""
    try:
        report = run()
    except FileRejected as rejected:
        issue = rejected.issue
        seen[f"file rejected: {issue.code}"] += 1
        assert 1 <= issue.line <= _physical_lines(data) and issue.field and issue.code
        if issue.code == "not_utf8":
            with pytest.raises(UnicodeDecodeError):
                data.decode("utf-8")
        return None
    for issue in [*report.errors, *report.duplicates]:
        assert 1 <= issue.line <= _physical_lines(data), issue
        assert issue.field and issue.code and issue.reason
        seen[f"row issue: {issue.code}"] += 1
    seen["committed" + (" some rows" if report.imported else " nothing") if report.committed
         else "not committed"] += 1
    return report


def _text(data: bytes) -> str:
    return data.decode("utf-8-sig")  # it imported: it was UTF-8


def _first_line_and_rest(text: str) -> tuple[str, str]:
    """The first line that is not blank, and the text after it."""
    position = 0
    for match in LINE_BREAK.finditer(text + "\n"):
        line = text[position:match.start()]
        if line.strip():
            return line, text[match.end():]
        position = match.end()
    return "", ""


# --------------------------------------------------------------------------- eligibility lists


def _expected_creators(text: str):
    """(stored rows, invalid rows) as a plain reading of the file says."""
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    columns = [c.strip().lower() for c in rows[0]]
    index = {c: columns.index(c) for c in ("handle", "email", "country", "name") if c in columns}
    stored, seen, invalid = set(), set(), 0
    for row in rows[1:]:
        if len(row) != len(columns):
            invalid += 1
            continue
        values = {c: row[i].strip() for c, i in index.items()}
        values.setdefault("name", "")
        try:
            assert not any(CONTROL.search(v) for v in values.values())
            assert 0 < len(values["handle"]) <= 100 and len(values["name"]) <= 200
            assert values["country"].upper() in COUNTRY_CODES
            email = normalise_email(values["email"])
        except (AssertionError, InvalidInput):
            invalid += 1
            continue
        if email not in seen:
            seen.add(email)
            stored.add((values["handle"], email, values["country"].upper(),
                        values["name"] or None))
    return stored, invalid


def test_fuzz_import_creators(app, backend):
    engine = app.extensions["db_engine"]
    seen = Counter()

    @_fuzz(backend)
    @given(data=CREATOR_FILES, skip_invalid=st.booleans())
    @example(data=b"handle,email,country,name\r\n@a,A@Example.com, pk ,Ann\n@b,b@example.com,PK,",
             skip_invalid=False)
    @example(data=b"handle,email,country\n@a,a@example.com,PK\x00\n", skip_invalid=False)
    @example(data=b"handle,email,country\n\x00@a,a@example.com,PK\n", skip_invalid=True)
    @example(data=b'handle,email,country,name\n@a,a@example.com,PK,"A\r\nB"\n',
             skip_invalid=True)
    @example(data=b"\xef\xbb\xbfhandle;email;country\r\n@a;a@example.com;PK\r\n",
             skip_invalid=False)
    @example(data=b'handle,email,country\n"@a' + b"x" * 200_000, skip_invalid=False)
    @example(data=b"handle,email,country\n" + b"@a," * 60_000, skip_invalid=False)
    def run(data, skip_invalid):
        _empty_tables(engine)
        with app.app_context():
            session = get_session()
            program = programs.create_program(session, slug="fuzz-6m", name="Fuzz", quota=5,
                                              actor="test")
            report = _check_outcome(lambda: imports.import_creators(
                session, program=program, stream=io.BytesIO(data), skip_invalid=skip_invalid,
                actor="test"), data, seen)
            session.rollback()
            stored = set(session.execute(
                sa.select(Creator.handle, Creator.email, Creator.country, Creator.name)
                .join(Eligibility, Eligibility.creator_id == Creator.id)).all())
            if report is None or not report.committed:
                assert stored == set() and session.scalar(sa.select(sa.func.count(Creator.id))) == 0
                return
            expected, invalid = _expected_creators(_text(data))
            assert stored == expected
            assert report.imported == len(expected) and report.invalid == invalid

    run()
    print(dict(seen))
    assert seen["committed some rows"] and seen["not committed"]
    assert seen["row issue: control_character"] and seen["file rejected: line_too_long"]


# --------------------------------------------------------------------------- codes


def _expected_codes(text: str) -> tuple[list[str], int] | None:
    """(the codes stored, in file order, and the invalid rows) as a plain reading of the file
    says; None if its first line is no known header and is only letters (it may be taken
    for a header)."""
    first, rest = _first_line_and_rest(text)
    cells = ([c.strip().lower() for c in next(csv.reader([first]), [])]
             if len(first) < MAX_LINE_CHARS else [])  # a longer one is a code, too long
    if "code" in cells:
        column, width = cells.index("code"), len(cells)
        values, invalid = [], 0
        for row in csv.reader(io.StringIO(rest, newline="")):
            if not any(c.strip() for c in row):
                continue
            if len(row) != width:
                invalid += 1
                continue
            values.append(row[column].strip())
    else:
        if re.fullmatch(r"[^\W\d_]+(?:[ _-][^\W\d_]+)*(?:\s*,\s*[^\W\d_]+(?:[ _-][^\W\d_]+)*)*",
                        first.strip()):
            return None
        values, invalid = [line.strip() for line in LINE_BREAK.split(text)], 0
    values = [v for v in values if v]
    good = [v for v in values if CODE.fullmatch(v)]
    return list(dict.fromkeys(good)), invalid + len(values) - len(good)


def test_fuzz_import_codes(app, backend):
    engine = app.extensions["db_engine"]
    seen = Counter()

    @_fuzz(backend)
    @given(data=CODE_FILES, skip_invalid=st.booleans())
    @example(data=b"HS-AAAA-0001\nHS-\x00AAAA\n", skip_invalid=False)
    @example(data=b"HS-AAAA-0001\nHS-\x00AAAA\n", skip_invalid=True)
    @example(data=b"codes\nHS-AAAA-0001\n", skip_invalid=True)
    @example(data=b"\xef\xbb\xbfcode\r\nHS-AAAA-0001\rHS-AAAA-0002\n", skip_invalid=False)
    @example(data=b'code\n"HS-AAAA' + b"x" * 200_000, skip_invalid=True)
    @example(data=b"X" * (3 * MAX_LINE_CHARS) + b"\nHS-AAAA-0002", skip_invalid=True)
    @example(data=b"code,note\nHS-AAAA-0001," + b"a," * 60_000, skip_invalid=True)
    def run(data, skip_invalid):
        _empty_tables(engine)
        with app.app_context():
            session = get_session()
            program = programs.create_program(session, slug="fuzz-6m", name="Fuzz", quota=5,
                                              actor="test")
            report = _check_outcome(lambda: imports.import_codes(
                session, program=program, stream=io.BytesIO(data), skip_invalid=skip_invalid,
                expires_on=None, actor="test"), data, seen)
            session.rollback()
            cipher = code_cipher.cipher()  # codes are stored encrypted: compare what they say
            stored = [cipher.decrypt(token) for token in session.scalars(
                sa.select(Code.value_encrypted).order_by(Code.id))]
            if report is None or not report.committed:
                assert stored == []
                return
            expected = _expected_codes(_text(data))
            if expected is None:  # a first line of letters only, taken for a code
                assert all(CODE.fullmatch(v) for v in stored)
                return
            codes, invalid = expected
            assert stored == codes
            assert report.imported == len(codes) and report.invalid == invalid

    run()
    print(dict(seen))
    assert seen["committed some rows"] and seen["not committed"]
    assert seen["row issue: control_character"] and seen["file rejected: header_unknown"]
