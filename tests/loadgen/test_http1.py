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
