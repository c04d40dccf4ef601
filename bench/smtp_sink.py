"""The SMTP server the product mails to: aiosmtpd in a process of its own (so the load
generator's CPU does not slow it), recording the receipt time, envelope and bytes of every
message. Each message is parsed and checked at the end (``dump``), not while mail is flowing,
so checking costs the measured run nothing.

Messages to ``@ceiling.invalid`` are the raw-SMTP ceiling's: only counted.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import multiprocessing as mp
import re
import threading
import time

from harness.smtp import SmtpListener

CEILING_DOMAIN = "ceiling.invalid"


class _Handler(SmtpListener):
    """Keeps each product message as received (time, envelope, bytes); counts the ceiling's.
    Offers PIPELINING, as providers do."""

    def __init__(self) -> None:
        super().__init__(pipelining=True)
        self.records: list[tuple[float, str, list[str], bytes]] = []
        self.ceiling_times: list[float] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        now = time.time()
        rcpts = list(envelope.rcpt_tos)
        if rcpts and rcpts[0].endswith("@" + CEILING_DOMAIN):
            self.ceiling_times.append(now)
        else:
            self.records.append((now, envelope.mail_from, rcpts, envelope.content))
        return "250 OK"


def check_messages(records, code_re: re.Pattern[str]) -> list[dict]:
    """Parse each message and say what is wrong with it, if anything."""
    out = []
    for received, mail_from, rcpts, content in records:
        item = {"t": received, "rcpt": rcpts[0].lower() if rcpts else None,
                "rcpts": len(rcpts), "from": mail_from, "bytes": len(content),
                "codes": [], "message_id": None, "problem": None}
        try:
            message = email.message_from_bytes(content, policy=email.policy.default)
            item["message_id"] = message["Message-ID"]
            to = (message["To"] or "").strip().lower()
            subject = message["Subject"] or ""
            body = message.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            item["codes"] = sorted(set(code_re.findall(text)))
            problems = []
            if len(rcpts) != 1:
                problems.append(f"{len(rcpts)} recipients")
            if to != item["rcpt"]:
                problems.append(f"To {to!r} is not the envelope recipient")
            if not subject:
                problems.append("no Subject")
            if not item["message_id"]:
                problems.append("no Message-ID")
            if body is None:
                problems.append("no text part")
            if len(item["codes"]) != 1:
                problems.append(f"{len(item['codes'])} codes in the text")
            elif message.get_body(preferencelist=("html",)) is not None and item["codes"][0] \
                    not in message.get_body(preferencelist=("html",)).get_content():
                problems.append("the HTML part does not carry the code")
            item["problem"] = "; ".join(problems) or None
        except Exception as exc:  # noqa: BLE001 - a message we cannot parse is a finding
            item["problem"] = f"unparseable: {type(exc).__name__}: {exc}"
        out.append(item)
    return out


def _sink_main(pipe, port: int) -> None:
    handler = _Handler().start(port)
    pipe.send(("ready", handler.port))
    try:
        while True:
            try:
                command, arg = pipe.recv()
            except (EOFError, KeyboardInterrupt):
                return
            if command == "stats":
                records = handler.records
                pipe.send({"received": len(records), "ceiling": len(handler.ceiling_times),
                           "first": records[0][0] if records else None,
                           "last": records[-1][0] if records else None,
                           "sessions": handler.connections})
            elif command == "ceiling_times":
                pipe.send(list(handler.ceiling_times))
            elif command == "dump":
                start = arg.get("start", 0)
                pipe.send(check_messages(handler.records[start:],
                                         re.compile(arg["code_pattern"])))
            elif command == "quit":
                return
    finally:
        with contextlib.suppress(Exception):
            handler.stop()


class SmtpSink:
    """The sink process, and a thread-safe handle on it."""

    def __init__(self, port: int) -> None:
        ctx = mp.get_context("spawn")
        self._pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=_sink_main, args=(child, port), name="smtp-sink",
                                daemon=True)
        self.proc.start()
        child.close()
        self._lock = threading.Lock()
        if not self._pipe.poll(30):
            raise RuntimeError("the SMTP sink did not start")
        _ready, self.port = self._pipe.recv()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _ask(self, command: str, arg=None, timeout: float = 120):
        with self._lock:
            self._pipe.send((command, arg))
            if not self._pipe.poll(timeout):
                raise RuntimeError(f"the SMTP sink did not answer {command}")
            return self._pipe.recv()

    def stats(self) -> dict:
        return self._ask("stats")

    def ceiling_times(self) -> list[float]:
        return self._ask("ceiling_times")

    def dump(self, code_pattern: str, start: int = 0) -> list[dict]:
        """Every product message received (from the ``start``-th on), parsed and checked."""
        return self._ask("dump", {"code_pattern": code_pattern, "start": start}, timeout=600)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pipe.send(("quit", None))
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
