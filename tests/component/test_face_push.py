"""The timeline push client (h11 on an asyncio protocol) against real listeners on 127.0.0.1,
answering in every HTTP/1.x way."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import AsyncIterator, Callable

import pytest

from companion.faces.push import PushBudget, PushFailed, open_push_connection, push_request
from companion.faces.subscribers import Subscribers
from tests.helpers import until

BODY = b'<MediaContainer commandID="3"/>'


class Listener:
    """A controller's listener that records each request and answers with ``answer(n)`` (n from 0)."""

    def __init__(self, answer: Callable[[int], bytes], *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self.writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answer(len(self.requests) - 1))
                await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def subscribers() -> AsyncIterator[Subscribers]:
    subs = Subscribers(render=lambda command_id, metadata: BODY, headers=lambda: {"X-Plex-Client-Identifier": "face-1"},
                       session=None, push_timeout=2.0)  # type: ignore[arg-type]  # https only, unused here
    yield subs
    await subs.stop()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n3;x=y\r\nabc\r\n0\r\nTrailer: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
])
async def test_every_framing_of_an_answer_completes_the_push(answer: bytes) -> None:
    async with Listener(lambda n: answer) as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        status = await asyncio.wait_for(connection.push(push_request("x", {}, BODY)), 2)
        assert status in (200, 204)
        # HTTP/1.0 answers close; HTTP/1.1 ones keep the connection for the next push.
        assert connection.reusable is answer.startswith(b"HTTP/1.1")
        connection.close()


async def test_an_answer_that_ends_at_close_completes_the_push() -> None:
    async with Listener(lambda n: b"HTTP/1.1 200 OK\r\n\r\nno length", close_after=True) as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        assert await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2) == 200
        assert not connection.reusable


@pytest.mark.parametrize("answer", [b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"])
async def test_a_malformed_answer_fails_the_push_and_closes(answer: bytes) -> None:
    async with Listener(lambda n: answer) as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        with pytest.raises(PushFailed):
            await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2)
        assert not connection.reusable


def test_a_header_with_a_line_break_is_refused() -> None:
    with pytest.raises(PushFailed, match="line break"):
        push_request("127.0.0.1:1", {"X-Plex-Device-Name": "TV\r\nX-Evil: 1"}, b"")


async def test_pushes_to_one_subscriber_share_one_connection_and_carry_the_headers(subscribers: Subscribers) -> None:
    async with Listener(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as listener:
        subscribers.subscribe("phone", protocol="http", peer="127.0.0.1", port=listener.port)
        await until(lambda: len(listener.requests) == 1)
        subscribers.push_to("phone")
        await until(lambda: len(listener.requests) == 2)
        assert listener.connections == 1
        head = listener.requests[0]
        assert head.startswith(b"POST /:/timeline HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{listener.port}\r\n".encode() in head
        assert b"X-Plex-Client-Identifier: face-1\r\n" in head
        assert b"Content-Type: application/xml\r\n" in head
        assert head.endswith(BODY)


async def test_a_connection_the_controller_closed_while_idle_is_replaced(subscribers: Subscribers) -> None:
    async with Listener(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") as listener:
        subscribers.subscribe("phone", protocol="http", peer="127.0.0.1", port=listener.port)
        await until(lambda: len(listener.requests) == 1)
        listener.writers[0].close()  # the controller drops its idle keep-alive connection
        subscribers.push_to("phone")
        await until(lambda: len(listener.requests) == 2)
        assert listener.connections == 2


async def test_an_error_status_counts_as_a_failed_push(subscribers: Subscribers) -> None:
    async with Listener(lambda n: b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n") as listener:
        subscribers.subscribe("phone", protocol="http", peer="127.0.0.1", port=listener.port)
        await until(lambda: len(listener.requests) == 1)
        await until(lambda: subscribers._subs["phone"].failures == 1)
        subscribers.push_to("phone")
        await until(lambda: subscribers._subs["phone"].failures == 2)


OK_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def test_at_the_limit_a_new_connection_takes_the_place_of_the_longest_idle_one() -> None:
    budget = PushBudget(limit=2)
    async with Listener(lambda n: OK_ANSWER) as listener:
        first = await open_push_connection("127.0.0.1", listener.port, budget)
        second = await open_push_connection("127.0.0.1", listener.port, budget)
        for connection in (first, second):
            assert await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2) == 200
        third = await open_push_connection("127.0.0.1", listener.port, budget)
        assert first.closed and not second.closed and budget.open == 2
        assert await asyncio.wait_for(third.push(push_request("x", {}, b"x")), 2) == 200
        second.close()
        third.close()
        assert budget.open == 0


async def test_at_the_limit_with_every_connection_busy_a_push_waits_for_one_to_close() -> None:
    budget = PushBudget(limit=1)

    def answer(n: int) -> bytes:
        return OK_ANSWER

    async with Listener(answer) as listener:
        busy = await open_push_connection("127.0.0.1", listener.port, budget)
        listener.answer = lambda n: b""  # the controller takes its time: the push stays in flight
        in_flight = asyncio.ensure_future(busy.push(push_request("x", {}, b"x")))
        await until(lambda: len(listener.requests) == 1)
        opening = asyncio.ensure_future(open_push_connection("127.0.0.1", listener.port, budget))
        await until(lambda: budget.waiting == 1)
        assert not opening.done() and budget.open == 1
        in_flight.cancel()  # a cancelled push closes its connection, which makes room
        with pytest.raises(asyncio.CancelledError):
            await in_flight
        fresh = await asyncio.wait_for(opening, 2)
        assert busy.closed and budget.open == 1
        listener.answer = answer
        assert await asyncio.wait_for(fresh.push(push_request("x", {}, b"x")), 2) == 200
        fresh.close()


async def test_a_push_waiting_for_room_takes_it_as_soon_as_a_busy_connection_goes_idle() -> None:
    budget = PushBudget(limit=1)
    async with Listener(lambda n: OK_ANSWER) as listener:
        busy = await open_push_connection("127.0.0.1", listener.port, budget)
        listener.answer = lambda n: b""  # the first answer is held back
        in_flight = asyncio.ensure_future(busy.push(push_request("x", {}, b"x")))
        await until(lambda: len(listener.requests) == 1)
        opening = asyncio.ensure_future(open_push_connection("127.0.0.1", listener.port, budget))
        await until(lambda: budget.waiting == 1)
        listener.writers[0].write(OK_ANSWER)  # the held answer arrives: busy is idle, and kept
        assert await asyncio.wait_for(in_flight, 2) == 200
        # Well before the idle close (15 s): the waiting push closes the idle connection and opens its own.
        fresh = await asyncio.wait_for(opening, 5)
        assert busy.closed and not fresh.closed and budget.open == 1
        fresh.close()


def test_the_default_limit_is_a_quarter_of_the_file_limit() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert PushBudget().limit == max(64, soft // 4)


async def test_a_controller_that_never_answers_fails_the_push_soon_after_its_deadline() -> None:
    budget = PushBudget(grain=0.05)
    async with Listener(lambda n: b"") as listener:  # reads the push, never answers
        connection = await open_push_connection("127.0.0.1", listener.port, budget)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(connection.push(push_request("x", {}, b"x"), started + 0.3), 5)
        assert 0.3 <= loop.time() - started < 2  # the deadline's TimeoutError, not wait_for's
        assert connection.closed and budget.open == 0


async def test_late_pushes_on_many_connections_each_fail_and_prompt_ones_are_kept() -> None:
    budget = PushBudget(grain=0.05)
    async with Listener(lambda n: OK_ANSWER) as prompt, Listener(lambda n: b"") as silent:
        answered = [await open_push_connection("127.0.0.1", prompt.port, budget) for _ in range(3)]
        unanswered = [await open_push_connection("127.0.0.1", silent.port, budget) for _ in range(3)]
        deadline = asyncio.get_running_loop().time() + 0.3
        results = await asyncio.wait_for(asyncio.gather(
            *(c.push(push_request("x", {}, b"x"), deadline) for c in (*answered, *unanswered)),
            return_exceptions=True), 5)
        assert results[:3] == [200, 200, 200]
        assert all(isinstance(r, TimeoutError) for r in results[3:])
        assert all(c.reusable for c in answered) and all(c.closed for c in unanswered)
        assert budget.open == 3
        for connection in answered:
            connection.close()


async def test_a_kept_connection_is_closed_once_idle_for_the_idle_limit() -> None:
    budget = PushBudget(idle_close=0.2, grain=0.05)
    async with Listener(lambda n: OK_ANSWER) as listener:
        connection = await open_push_connection("127.0.0.1", listener.port, budget)
        assert await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2) == 200
        assert connection.reusable
        await until(lambda: connection.closed, timeout=5)
        assert budget.open == 0


async def test_a_subscriber_that_never_answers_counts_a_failed_push_after_the_push_timeout() -> None:
    subs = Subscribers(render=lambda command_id, metadata: BODY, headers=lambda: {},
                       session=None, push_timeout=0.3)  # type: ignore[arg-type]  # https only, unused here
    try:
        async with Listener(lambda n: b"") as listener:
            subs.subscribe("phone", protocol="http", peer="127.0.0.1", port=listener.port)
            await until(lambda: len(listener.requests) == 1)
            await until(lambda: subs._subs["phone"].failures == 1, timeout=5)
    finally:
        await subs.stop()


async def test_bytes_after_the_answer_close_the_connection_but_the_push_counts() -> None:
    async with Listener(lambda n: OK_ANSWER + b"HTTP/1.1 2") as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        assert await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2) == 200
        assert connection.closed


async def test_an_answer_cut_short_by_the_close_fails_the_push() -> None:
    async with Listener(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close_after=True) as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        with pytest.raises(PushFailed, match="closed the connection"):
            await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2)


async def test_an_answer_with_endless_headers_is_refused() -> None:
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000) for i in range(20))
    async with Listener(lambda n: b"HTTP/1.1 200 OK\r\n" + headers + b"Content-Length: 0\r\n\r\n") as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        with pytest.raises(PushFailed, match="bytes of headers"):
            await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2)
        assert connection.closed


async def test_a_large_body_in_the_answer_is_read_and_dropped() -> None:
    big = b"z" * 200_000
    async with Listener(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)) as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        for _ in range(2):
            assert await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2) == 200
        assert connection.reusable and listener.connections == 1
        connection.close()


async def test_an_interim_answer_does_not_settle_the_push() -> None:
    async with Listener(lambda n: b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                                  b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n") as listener:
        connection = await open_push_connection("127.0.0.1", listener.port)
        assert await asyncio.wait_for(connection.push(push_request("x", {}, b"x")), 2) == 503
