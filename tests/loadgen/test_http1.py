"""The lean HTTP/1.1 client against a scripted loopback server: keep-alive reuse, chunked
bodies, `Connection: close`, and garbage."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from inferopt.loadgen.http1 import HttpError, Pool, encode_post

Answer = Callable[[bytes], bytes]  # request head -> raw response


async def with_server(answer: Answer, client: Callable[[Pool], Awaitable[None]]) -> int:
    """Serve `answer` on loopback while `client` runs; returns how many connections came."""
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(100):  # bounded: a test sends far fewer requests
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(answer(head))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool("127.0.0.1", port)
    try:
        await asyncio.wait_for(client(pool), 10)
    finally:
        await pool.close()
        server.close()
    return connections


REQUEST = encode_post("h", "/v2/models/m/infer", b"12345", {"Content-Type": "application/json"})


def test_the_request_is_a_complete_post() -> None:
    assert REQUEST.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: h\r\n")
    assert b"Content-Length: 5\r\n" in REQUEST and REQUEST.endswith(b"\r\n\r\n12345")


def test_keep_alive_reuses_one_connection() -> None:
    def answer(_: bytes) -> bytes:
        return b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 4\r\n\r\nbusy"

    async def client(pool: Pool) -> None:
        for _ in range(5):
            assert await pool.send(REQUEST) == (429, b"busy")

    assert asyncio.run(with_server(answer, client)) == 1


def test_chunked_bodies_and_connection_close() -> None:
    def answer(_: bytes) -> bytes:
        chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        return chunked + b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"

    async def client(pool: Pool) -> None:
        for _ in range(3):
            assert await pool.send(REQUEST) == (200, b"abcde")

    assert asyncio.run(with_server(answer, client)) == 3  # one connection per request


def test_a_response_that_is_not_http_is_an_error() -> None:
    async def client(pool: Pool) -> None:
        with pytest.raises(HttpError, match=r"not an HTTP/1\.x status line"):
            await pool.send(REQUEST)

    asyncio.run(with_server(lambda _: b"SSH-2.0-nope\r\n\r\n", client))


def test_a_keep_alive_connection_the_server_closed_is_replaced_not_counted_as_an_error() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(5)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")  # says keep-alive ...
        await writer.drain()
        writer.close()  # ... then closes, like a server's idle timeout

    async def scenario() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            assert await pool.send(REQUEST) == (200, b"ok")
            assert await pool.send(REQUEST) == (200, b"ok")  # detected before reuse
            await asyncio.sleep(0.05)
            assert await pool.send(REQUEST) == (200, b"ok")
        finally:
            await pool.close()
            server.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_stale_connection_found_only_on_sending_is_retried_once() -> None:
    async def scenario() -> None:
        answered = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal answered
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(5)
            answered += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            assert await pool.send(REQUEST) == (200, b"ok")
            # Pretend the close has not been seen yet: the idle check passes, the read fails.
            reader, _ = pool._idle[0]
            reader.at_eof = lambda: False  # type: ignore[method-assign]
            assert await pool.send(REQUEST) == (200, b"ok")
            assert answered == 2
        finally:
            await pool.close()
            server.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


# -- Pool.stream: bodies read piece by piece ------------------------------------------------

Handle = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Reads one request (head and body); False when the client closed instead."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    return True


def chunked(*pieces: bytes, head: bytes = b"HTTP/1.1 200 OK") -> bytes:
    """A chunked response whose chunks are `pieces` (one chunk each)."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return head + b"\r\ntransfer-encoding: chunked\r\n\r\n" + body + b"0\r\n\r\n"


async def serving(handle: Handle, scenario: Callable[[Pool], Awaitable[None]]) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    pool = Pool("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        await asyncio.wait_for(scenario(pool), 10)
    finally:
        await pool.close()
        server.close()


def test_a_chunked_body_comes_piece_by_piece_as_it_arrives() -> None:
    first_read = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await writer.drain()
        await first_read.wait()  # the rest only once the client has the first chunk
        writer.write(b"2\r\nde\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def scenario(pool: Pool) -> None:
        async with pool.stream(REQUEST) as response:
            assert (response.status, response.complete) == (200, False)
            pieces = response.chunks()
            assert await anext(pieces) == b"abc"
            first_read.set()
            assert [p async for p in pieces] == [b"de"] and response.complete

    asyncio.run(serving(handle, scenario))


# A body of three events: CRLF, LF and lone-CR line ends, two- and four-byte characters.
EVENTS = 'data: {"text": "é"}\r\n\r\nid: 7\ndata: 😀 a\ndata: b\n\ndata: [DONE]\r\rtail'
LINES = [
    'data: {"text": "é"}',
    "",
    "id: 7",
    "data: 😀 a",
    "data: b",
    "",
    "data: [DONE]",
    "",
    "tail",
]


@pytest.mark.parametrize("cut", ["every byte", "every split in two"])
def test_lines_are_whole_wherever_chunks_split_them(cut: str) -> None:
    raw = EVENTS.encode()
    if cut == "every byte":  # one chunk per byte: every boundary at once
        bodies = [[raw[i : i + 1] for i in range(len(raw))]]
    else:  # two chunks, cut at each byte in turn: inside characters, between CR and LF
        bodies = [[raw[:i], raw[i:]] for i in range(1, len(raw))]

    def answer(_: bytes) -> bytes:
        return chunked(*bodies.pop())

    async def client(pool: Pool) -> None:
        for _ in range(len(bodies)):
            async with pool.stream(REQUEST) as response:
                lines = [line.decode() async for line in response.lines()]
            assert lines == LINES

    assert asyncio.run(with_server(answer, client)) == 1  # each read whole: kept alive


def test_a_content_length_body_is_read_in_pieces_and_kept_alive() -> None:
    body = b"x" * 200_000  # past one read

    def answer(_: bytes) -> bytes:
        return b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 200000\r\n\r\n" + body

    async def client(pool: Pool) -> None:
        for _ in range(2):
            async with pool.stream(REQUEST) as response:
                pieces = [p async for p in response.chunks()]
            assert response.status == 429 and b"".join(pieces) == body and len(pieces) > 1

    assert asyncio.run(with_server(answer, client)) == 1


def test_a_half_read_answer_closes_its_connection() -> None:
    def answer(_: bytes) -> bytes:
        return chunked(b"one", b"two")

    async def client(pool: Pool) -> None:
        async with pool.stream(REQUEST) as response:
            assert await anext(response.chunks()) == b"one"  # then left unread
        assert await pool.send(REQUEST) == (200, b"onetwo")
        assert await pool.send(REQUEST) == (200, b"onetwo")

    assert asyncio.run(with_server(answer, client)) == 2  # the half-read one was not reused


def test_bodies_without_length_or_without_body() -> None:
    answers = [
        b"HTTP/1.1 204 No Content\r\n\r\n",  # never a body: nothing to wait for
        b"HTTP/1.0 200 OK\r\n\r\nto the end",  # the body runs to the close
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers and await read_request(reader):
            writer.write(answers.pop(0))
            await writer.drain()
            if not answers:
                writer.close()

    async def scenario(pool: Pool) -> None:
        assert await pool.send(REQUEST) == (204, b"")
        assert len(pool._idle) == 1  # complete at once: kept
        assert await pool.send(REQUEST) == (200, b"to the end")
        assert not pool._idle  # no length: the connection ended the body

    asyncio.run(serving(handle, scenario))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab", "closed"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n", "closed mid-body"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\naXY", "CRLF"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", "bytes of the body due"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", "bad Content-Length"),
    ],
)
def test_a_body_cut_short_or_misframed_is_an_error(raw: bytes, message: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    async def scenario(pool: Pool) -> None:
        with pytest.raises(HttpError, match=message):
            await pool.send(REQUEST)
        assert not pool._idle

    asyncio.run(serving(handle, scenario))


def test_a_connection_that_broke_after_the_answer_began_is_not_retried() -> None:
    connections, requests = 0, 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections, requests
        connections += 1
        while await read_request(reader):
            requests += 1
            if requests == 1:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
            else:  # the reused connection breaks after one byte of the answer
                writer.write(b"H")
                await writer.drain()
                writer.close()
                return

    async def scenario(pool: Pool) -> None:
        assert await pool.send(REQUEST) == (200, b"ok")
        with pytest.raises(HttpError, match="no complete response head"):
            await pool.send(REQUEST)

    asyncio.run(serving(handle, scenario))
    assert (connections, requests) == (1, 2)  # sent once: the server may have acted on it
