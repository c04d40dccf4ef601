"""Redis as the product's broker: whether one answers, and a private ``redis-server``."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from harness.errors import HarnessError
from harness.ports import free_port
from harness.process import Service
from harness.waiting import wait_for


def redis_ping(url: str, timeout: float = 2.0) -> str | None:
    """None when the Redis server of ``url`` (``redis://host:port[/db]``) answers PING, else
    why not."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port or 6379),
                                      timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            if not sock.recv(16).startswith(b"+PONG"):
                return f"{url} did not answer PING"
        return None
    except OSError as exc:
        return f"{url}: {exc}"


@dataclass
class RedisServer:
    """A private ``redis-server`` on a free port, persisting nothing: a broker the caller may
    kill and start again on the same port (empty, then), without touching any shared Redis.
    Each start writes its output to ``redis-<n>.log`` in ``workdir``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    service: Service | None = None
    starts: int = 0

    @staticmethod
    def why_unavailable() -> str | None:
        """None when ``redis-server`` can be started, else why not."""
        return None if shutil.which("redis-server") else "redis-server is not on PATH"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.service is not None and self.service.running

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING."""
        if why := self.why_unavailable():
            raise HarnessError(why)
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        self.service = Service("redis", argv, dict(os.environ),
                               self.workdir / f"redis-{self.starts}.log", cwd=self.workdir).start()
        wait_for(self._pong, timeout=15, interval=0.05, what=f"redis-server on {self.port}")
        return self

    def _pong(self) -> bool:
        self.service.ensure_running()
        return redis_ping(self.url(), timeout=1) is None

    def kill(self) -> None:
        """SIGKILL: the broker is gone, with every message it held."""
        if self.service:
            self.service.kill()

    def stop(self) -> None:
        if self.service:
            self.service.stop(5)
