"""The load generator: a small HTTP/1.1 keep-alive client on raw asyncio streams, run in one or
more separate processes (``LoadGenerator``), each holding its share of the connections.

Each process keeps the signed-in creators it prepared (session cookie and CSRF token), so the
sign-in work happens before the timed part and the claims go out as fast as the server takes
them: every connection sends its next request as soon as the previous answer is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import re
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote

CSRF_RE = re.compile(rb'<input[^>]*name="csrf_token"[^>]*value="([^"]+)"')
REQUEST_TIMEOUT = 120.0
CONNECT_RETRIES = 20


class HttpError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def cookies(self) -> list[tuple[str, str | None]]:
        """(name, value) set by the response; value None when the cookie is deleted."""
        out = []
        for key, value in self.headers:
            if key != b"set-cookie":
                continue
            text = value.decode("latin-1")
            pair, _, attrs = text.partition(";")
            name, _, val = pair.strip().partition("=")
            attrs_l = attrs.lower()
            deleted = "max-age=0" in attrs_l or "expires=thu, 01 jan 1970" in attrs_l
            out.append((name, None if deleted else val))
        return out


class Connection:
    """One HTTP/1.1 connection, reopened when the server closes it (``Connection: close``)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0  # requests answered on the current connection
        self.opened = 0

    async def _open(self) -> None:
        for attempt in range(CONNECT_RETRIES):
            try:
                self.reader, self.writer = await asyncio.open_connection(
                    self.host, self.port, limit=1 << 20)
                self.opened += 1
                self.used = 0
                return
            except OSError:
                if attempt == CONNECT_RETRIES - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.close()
        self.reader = self.writer = None

    async def request(self, raw: bytes) -> Response:
        for attempt in (0, 1):
            if self.writer is None:
                await self._open()
            reused = self.used > 0
            try:
                self.writer.write(raw)
                return await self._read()
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.close()
                # A kept-alive connection the server closed while idle: send again, once.
                # (Nothing of an answer was read, so the server did not take the request.)
                if attempt == 0 and reused:
                    continue
                raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def _read(self) -> Response:
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].split(b"\r\n")
        version, status, *_ = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            headers.append((key.strip().lower(), value.strip()))
        response = Response(int(status), headers, b"")
        length = response.header(b"content-length")
        if length is not None:
            response.body = await self.reader.readexactly(int(length))
        elif (response.header(b"transfer-encoding") or b"").lower() == b"chunked":
            response.body = await self._read_chunked()
        elif response.status not in (204, 304) and not 100 <= response.status < 200:
            response.body = await self.reader.read()  # until the server closes
            self.close()
            return response
        self.used += 1
        connection = (response.header(b"connection") or b"").lower()
        if connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive"):
            self.close()
        return response

    async def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)


def build_request(method: str, path: str, host: str, cookie: str = "", body: bytes = b"",
                  content_type: str = "application/x-www-form-urlencoded") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: wp-bench/1",
             "Accept: text/html", "Connection: keep-alive"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if method in ("POST", "PUT"):
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- in the process


class _Worker:
    """What one load process does; its state (signed-in creators) lives between commands."""

    def __init__(self, index: int, host: str, port: int, progress) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.hostport = f"{host}:{port}"
        self.progress = progress  # shared array: [done, errors] per process
        self.jars: dict[int, dict[str, str]] = {}
        self.csrf: dict[int, str] = {}

    def _count(self, ok: bool) -> None:
        self.progress[self.index * 2 + (0 if ok else 1)] += 1

    def _cookie(self, key: int) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.jars.get(key, {}).items())

    def _keep_cookies(self, key: int, response: Response) -> None:
        jar = self.jars.setdefault(key, {})
        for name, value in response.cookies():
            if value is None:
                jar.pop(name, None)
            else:
                jar[name] = value

    async def _pool(self, items: list, connections: int, one) -> None:
        """Run ``one(conn, item)`` over ``items`` with ``connections`` connections."""
        it = iter(items)

        async def run() -> None:
            conn = Connection(self.host, self.port)
            try:
                for item in it:
                    await one(conn, item)
            finally:
                conn.close()

        await asyncio.gather(*(run() for _ in range(max(1, min(connections, len(items))))))

    # -- sign in ---------------------------------------------------------------------------

    async def sign_in(self, items: list[tuple[int, str]], page: str, connections: int) -> dict:
        errors: list[str] = []

        async def one(conn: Connection, item: tuple[int, str]) -> None:
            key, token = item
            try:
                # The link opens a page with one button; its POST signs in.
                response = await asyncio.wait_for(conn.request(build_request(
                    "GET", f"/login/{token}", self.hostport)), REQUEST_TIMEOUT)
                match = CSRF_RE.search(response.body)
                if response.status != 200 or not match:
                    raise HttpError(f"GET /login/<token>: {response.status}, no button")
                self._keep_cookies(key, response)
                response = await asyncio.wait_for(conn.request(build_request(
                    "POST", f"/login/{token}", self.hostport, self._cookie(key),
                    b"csrf_token=" + quote(match.group(1)).encode())), REQUEST_TIMEOUT)
                if response.status != 302:
                    raise HttpError(f"POST /login/<token>: {response.status}")
                self._keep_cookies(key, response)
                response = await asyncio.wait_for(conn.request(build_request(
                    "GET", page, self.hostport, self._cookie(key))), REQUEST_TIMEOUT)
                if response.status != 200:
                    raise HttpError(f"GET {page}: {response.status}")
                self._keep_cookies(key, response)
                match = CSRF_RE.search(response.body)
                if not match:
                    raise HttpError(f"GET {page}: no csrf_token field")
                self.csrf[key] = match.group(1).decode()
                self._count(True)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                conn.close()
                self._count(False)
                if len(errors) < 20:
                    errors.append(f"creator {key}: {type(exc).__name__}: {exc}")

        await self._pool(items, connections, one)
        return {"signed_in": sum(1 for k, _ in items if k in self.csrf), "errors": errors}

    # -- claims ----------------------------------------------------------------------------

    async def claims(self, keys: list[int], path: str, expect_location: str,
                     connections: int) -> dict:
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        errors: list[str] = []
        requests = {key: build_request("POST", path, self.hostport, self._cookie(key),
                                       b"csrf_token=" + quote(self.csrf[key]).encode())
                    for key in keys}
        first_sent = None
        last_done = 0.0

        async def one(conn: Connection, key: int) -> None:
            nonlocal first_sent, last_done
            started_wall = time.time()
            if first_sent is None:
                first_sent = started_wall
            started = time.perf_counter()
            try:
                response = await asyncio.wait_for(conn.request(requests[key]), REQUEST_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                conn.close()
                statuses[type(exc).__name__] += 1
                self._count(False)
                if len(errors) < 20:
                    errors.append(f"creator {key}: {type(exc).__name__}: {exc}")
                return
            elapsed = time.perf_counter() - started
            last_done = max(last_done, time.time())
            location = (response.header(b"location") or b"").decode("latin-1")
            ok = response.status == 302 and location.endswith(expect_location)
            statuses[str(response.status) if ok or response.status != 302
                     else f"302 to {location}"] += 1
            self._keep_cookies(key, response)
            if ok:
                latencies.append(elapsed)
            elif len(errors) < 20:
                errors.append(f"creator {key}: {response.status} {location} "
                              f"{response.body[:200]!r}")
            self._count(ok)

        await self._pool(keys, connections, one)
        return {"latencies": latencies, "statuses": dict(statuses), "errors": errors,
                "first_sent": first_sent, "last_done": last_done}

    # -- a fixed request, for a while ------------------------------------------------------

    async def hammer(self, raw: bytes, expect_status: int, seconds: float,
                     connections: int) -> dict:
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        deadline = time.perf_counter() + seconds
        first_sent = time.time()
        last_done = first_sent

        async def run() -> None:
            nonlocal last_done
            conn = Connection(self.host, self.port)
            try:
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    try:
                        response = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT)
                    except Exception as exc:  # noqa: BLE001
                        conn.close()
                        statuses[type(exc).__name__] += 1
                        self._count(False)
                        continue
                    latencies.append(time.perf_counter() - started)
                    last_done = time.time()
                    statuses[str(response.status)] += 1
                    self._count(response.status == expect_status)
            finally:
                conn.close()

        await asyncio.gather(*(run() for _ in range(connections)))
        return {"latencies": latencies, "statuses": dict(statuses), "errors": [],
                "first_sent": first_sent, "last_done": last_done}


def _process_main(index: int, host: str, port: int, pipe, progress) -> None:
    worker = _Worker(index, host, port, progress)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            try:
                command, kwargs = pipe.recv()
            except EOFError:
                return
            if command == "quit":
                return
            try:
                result = asyncio.run(getattr(worker, command)(**kwargs))
            except Exception:  # noqa: BLE001 - handed to the parent
                result = {"crashed": traceback.format_exc()}
            pipe.send(result)


class LoadGenerator:
    """``processes`` load processes; ``connections`` spread over them."""

    def __init__(self, host: str, port: int, processes: int) -> None:
        self.host = host
        self.port = port
        ctx = mp.get_context("spawn")
        self.progress = ctx.Array("q", processes * 2, lock=False)
        self.pipes = []
        self.procs = []
        self._owners: dict[int, int] = {}
        for index in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_process_main, name=f"load{index}",
                               args=(index, host, port, child, self.progress), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def counts(self) -> tuple[int, int]:
        done = sum(self.progress[i] for i in range(0, len(self.progress), 2))
        errors = sum(self.progress[i] for i in range(1, len(self.progress), 2))
        return done, errors

    def reset_counts(self) -> None:
        for i in range(len(self.progress)):
            self.progress[i] = 0

    def _split_connections(self, connections: int) -> list[int]:
        n = len(self.procs)
        return [connections // n + (1 if i < connections % n else 0) for i in range(n)]

    def run(self, command: str, per_process: list[dict], on_poll=None,
            poll_interval: float = 0.2) -> list[dict]:
        """Send each process its command, wait for all answers (calling ``on_poll`` while
        waiting)."""
        for pipe, kwargs in zip(self.pipes, per_process, strict=True):
            pipe.send((command, kwargs))
        results: list[dict | None] = [None] * len(self.pipes)
        while any(r is None for r in results):
            for i, pipe in enumerate(self.pipes):
                if results[i] is None and pipe.poll(0):
                    results[i] = pipe.recv()
            for i, proc in enumerate(self.procs):
                if results[i] is None and not proc.is_alive():
                    raise RuntimeError(f"load process {i} died ({proc.exitcode})")
            if on_poll:
                on_poll()
            if any(r is None for r in results):
                time.sleep(poll_interval)
        for r in results:
            if "crashed" in r:
                raise RuntimeError(f"a load process failed:\n{r['crashed']}")
        return results

    def sign_in(self, items: list[tuple[int, str]], page: str, connections: int,
                on_poll=None) -> dict:
        n = len(self.procs)
        shares = [items[i::n] for i in range(n)]
        for i, (key, _token) in enumerate(items):
            self._owners[key] = i % n  # the process that holds this creator's session
        self.reset_counts()
        results = self.run("sign_in", [
            {"items": share, "page": page, "connections": conns}
            for share, conns in zip(shares, self._split_connections(connections), strict=True)
        ], on_poll)
        return {"signed_in": sum(r["signed_in"] for r in results),
                "errors": [e for r in results for e in r["errors"]]}

    def claims(self, keys: list[int], path: str, expect_location: str, connections: int,
               on_poll=None) -> dict:
        """POST ``path`` once for each creator in ``keys``, each signed in by ``sign_in``
        (in the process that holds its session)."""
        shares: list[list[int]] = [[] for _ in self.procs]
        for key in keys:
            shares[self._owners[key]].append(key)
        self.reset_counts()
        results = self.run("claims", [
            {"keys": share, "path": path, "expect_location": expect_location,
             "connections": conns}
            for share, conns in zip(shares, self._split_connections(connections), strict=True)
        ], on_poll)
        return _merge(results)

    def hammer(self, raw: bytes, expect_status: int, seconds: float, connections: int,
               on_poll=None) -> dict:
        self.reset_counts()
        results = self.run("hammer", [
            {"raw": raw, "expect_status": expect_status, "seconds": seconds,
             "connections": conns}
            for conns in self._split_connections(connections)
        ], on_poll)
        return _merge(results)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("quit", {}))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
        for pipe in self.pipes:
            pipe.close()


def _merge(results: list[dict]) -> dict:
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r["statuses"])
    firsts = [r["first_sent"] for r in results if r["first_sent"]]
    lasts = [r["last_done"] for r in results if r["last_done"]]
    return {"latencies": [x for r in results for x in r["latencies"]],
            "statuses": dict(statuses),
            "errors": [e for r in results for e in r["errors"]][:20],
            "first_sent": min(firsts) if firsts else None,
            "last_done": max(lasts) if lasts else None}
