"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for sending inference requests.

Why not httpx: on two cores the generator competes with the server for CPU, and httpx spends
about 2.5 ms of CPU per request (measured: 350 req/s at 94% of a core, against digits-cnn).
Here a request is one pre-encoded buffer written to a socket and a response read by its
Content-Length (or chunks), which costs a fraction of that. Metadata and /metrics, read once
per run, still go through httpx.

`Pool.send` reads a whole answer; `Pool.stream` hands over the response after its head, for
reading the body piece by piece as it arrives (server-sent events: streaming.py times each
piece, so none is held back waiting for the next).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_MAX_HEAD = 64 * 1024  # a response head longer than this is not a server we can talk to
_READ = 64 * 1024  # the most body bytes one piece holds


class HttpError(Exception):
    """The connection failed or the response was not HTTP/1.1 we understand."""


class _Stale(HttpError):
    """The connection closed before any byte of the response: the server never took the
    request (it closes idle keep-alive connections), so it is safe to send it again."""


def encode_post(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete POST, built once and sent as many times as needed."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Pool:
    """Keep-alive connections to one server; a request takes an idle one or opens one (the
    callers bound how many requests run at once, so the pool needs no limit of its own).
    `tls`: https, with the system's certificates; `max_idle`: idle connections kept at most
    (None: all)."""

    def __init__(
        self, host: str, port: int, *, tls: bool = False, max_idle: int | None = None
    ) -> None:
        self.host, self.port, self.max_idle = host, port, max_idle
        self._tls = ssl.create_default_context() if tls else None  # built once: it is costly
        self._idle: list[Connection] = []

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """(status, body). Raises HttpError or OSError; the connection is then dropped."""
        async with self.stream(request) as response:
            return response.status, await response.read()

    @contextlib.asynccontextmanager
    async def stream(self, request: bytes) -> AsyncIterator[Response]:
        """`async with pool.stream(request) as response:` the response once its head is in;
        read its body with response.read(), .chunks() or .lines(). On leaving, the connection
        goes back to the pool if the body was read to its end, else (an error, a cancellation,
        a body left unread) it is closed.

        Raises HttpError or OSError (refused, reset, closed mid-answer). A kept-alive
        connection that turns out closed before any byte of the response is replaced and the
        request sent once more; after any byte of it, never.
        """
        response = await self._start(request)
        try:
            yield response
        finally:
            writer = response.connection[1]
            keep = response.complete and response.keep and not writer.is_closing()
            if keep and (self.max_idle is None or len(self._idle) < self.max_idle):
                self._idle.append(response.connection)
            else:
                writer.close()

    async def _start(self, request: bytes) -> Response:
        connection = self._take_idle()
        if connection is not None:
            try:
                return await _exchange(connection, request)
            except _Stale:
                pass  # the server closed it while idle (keep-alive timeout): not an answer
        return await _exchange(await self._open(), request)

    def _take_idle(self) -> Connection | None:
        while self._idle:
            reader, writer = self._idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()
        return None

    async def _open(self) -> Connection:
        return await asyncio.open_connection(self.host, self.port, limit=_MAX_HEAD, ssl=self._tls)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class Response:
    """A response whose head has been read: `status`, `headers` (names in lower case). Its
    body is read once, by read(), chunks() or lines(), or by several in turn (each goes on
    where the last stopped, but a line that lines() had begun is lost); `complete` once it
    has all been read. Reading raises HttpError
    (a body cut short or not framed as HTTP/1.1 says) or OSError (reset)."""

    def __init__(
        self,
        connection: Connection,
        status: int,
        headers: dict[str, str],
        chunked: bool,
        length: int | None,  # of the body when not chunked; None: up to the connection's end
        keep: bool,  # the connection can take another request once the body is read
    ) -> None:
        self.connection, self.status, self.headers = connection, status, headers
        self._reader, self._chunked = connection[0], chunked
        self.keep = keep and (chunked or length is not None)
        self._left = length  # bytes not yet read: of the body, or of the current chunk
        self._crlf_due = False  # the CRLF that ends a chunk's data, read with the next size
        self.complete = not chunked and length == 0

    async def read(self) -> bytes:
        """The rest of the body."""
        pieces: list[bytes] = []
        while piece := await self._next():
            pieces.append(piece)
        return b"".join(pieces)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body in pieces as they arrive: what one socket read brings, at
        most one chunk of a chunked body and at most 64 KiB."""
        while piece := await self._next():
            yield piece

    async def lines(self) -> AsyncIterator[bytes]:
        """The rest of the body as lines, each as soon as its end arrives, without the end:
        LF, CRLF or a lone CR, the three that server-sent events allow. Bytes, not text, so
        a UTF-8 character split between pieces comes whole. A last line without an end comes
        when the body ends."""
        pending = b""
        while piece := await self._next():
            data = pending + piece if pending else piece
            held = b""
            if b"\r" in data:
                if data.endswith(b"\r"):  # maybe the first half of a CRLF: wait for the next
                    data, held = data[:-1], b"\r"
                data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            *complete, pending = data.split(b"\n")
            pending += held
            for line in complete:
                yield line
        if pending:
            yield pending.removesuffix(b"\r")

    async def _next(self) -> bytes:
        """The next piece of the body as it arrives; b"" at its end."""
        if self.complete:
            return b""
        reader = self._reader
        try:
            if self._chunked and not self._left:
                await self._chunk_size()
                if self.complete:
                    return b""
            if self._left is None:  # the body runs to the end of the connection
                piece = await reader.read(_READ)
                self.complete = not piece
                return piece
            piece = await reader.read(min(self._left, _READ))
        except asyncio.IncompleteReadError as exc:
            raise HttpError(f"the connection closed mid-body: {exc!r}") from exc
        if not piece:
            raise HttpError(f"the connection closed with {self._left} bytes of the body due")
        self._left -= len(piece)
        if not self._left:
            self._crlf_due, self.complete = self._chunked, not self._chunked
        return piece

    async def _chunk_size(self) -> None:
        """Reads the next chunk's size line (and the CRLF before it): sets the bytes left,
        or `complete` at the last chunk (size 0), after its trailers."""
        reader = self._reader
        if self._crlf_due:
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError("a chunk's data does not end with CRLF")
            self._crlf_due = False
        try:
            line = await reader.readline()
        except ValueError as exc:  # past the reader's limit
            raise HttpError(f"a chunk size line longer than {_MAX_HEAD} bytes") from exc
        if not line.endswith(b"\n"):
            raise HttpError("the connection closed mid-body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            size = -1
        if size < 0:
            raise HttpError(f"bad chunk size line {line[:40]!r}")
        if size:
            self._left = size
            return
        while (trailer := await reader.readline()) not in (b"\r\n", b"\n"):
            if not trailer:  # bounded by the server's trailers: each pass reads one line
                raise HttpError("the connection closed in the trailers")
        self.complete = True


async def _exchange(connection: Connection, request: bytes) -> Response:
    """Sends `request` and reads the head of its response."""
    writer = connection[1]
    try:
        writer.write(request)
        return await _read_head(connection)
    except BaseException:  # cancelled or failed midway: the stream is in an unknown state
        writer.close()
        raise


async def _read_head(connection: Connection) -> Response:
    try:
        head = await connection[0].readuntil(b"\r\n\r\n")
    except ConnectionResetError as exc:
        raise _Stale("connection reset before the response") from exc
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Stale("connection closed before the response") from exc
        raise HttpError(f"no complete response head: {exc!r}") from exc
    except asyncio.LimitOverrunError as exc:
        raise HttpError(f"response head too long: {exc!r}") from exc
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HttpError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    # HTTP/1.0 closes after each answer unless told otherwise: not worth telling apart.
    keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    status = int(parts[1])
    chunked = headers.get("transfer-encoding", "").lower() == "chunked"
    length: int | None = None
    if status in (204, 304):  # never a body
        length, chunked = 0, False
    elif not chunked and "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            length = -1
        if length < 0:
            raise HttpError(f"bad Content-Length {headers['content-length'][:40]!r}")
    return Response(connection, status, headers, chunked, length, keep)
