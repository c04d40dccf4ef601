"""An SMTP server (aiosmtpd) on a local port, in the process that starts it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Self

from harness.ports import free_port

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller


@dataclass
class SmtpListener:
    """The aiosmtpd handler and its server: counts the SMTP sessions (``connections``: each
    EHLO or HELO), and offers PIPELINING (RFC 2920) when ``pipelining`` is set, as providers
    do. aiosmtpd reads each command in turn from a buffered stream, so it serves pipelined
    commands correctly; it just does not offer them. What a message does is the subclass's
    ``handle_DATA``; the handler's methods run in the server's thread, so state they share
    with the caller is kept under ``_lock``."""

    connections: int = 0
    pipelining: bool = False
    controller: Controller | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        with self._lock:
            self.connections += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_HELO(self, server, session, envelope, hostname):  # noqa: N802
        with self._lock:
            self.connections += 1
        session.host_name = hostname
        return f"250 {server.hostname}"

    def start(self, port: int | None = None) -> Self:
        """Listen on 127.0.0.1:``port`` (a free one by default); returns once it accepts."""
        from aiosmtpd.controller import Controller

        self.controller = Controller(self, hostname="127.0.0.1", port=port or free_port(),
                                     ready_timeout=30)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()

    @property
    def port(self) -> int:
        return self.controller.port
