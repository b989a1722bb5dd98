"""The API's front door: a unix socket served on a thread of its own.

While 100k tasks converge, the daemon's event loop is busy with the loops' rounds, and
a request waits for several turns of it (accept, read, the handler) behind them
(docs/sim.md). The front door owns the unix socket's listener on its own thread and
answers the reads `fastreads.answer` can give (`docker service ls`, `docker node ls`,
the ping) there, from the store's immutable snapshot, never from the tables the loop
mutates. Python runs one thread at a time, but a thread that waits for the interpreter
gets it within the switch interval, not after a round of every loop.

It looks at each request without taking it (MSG_PEEK): a request it cannot answer, and
the rest of that connection, is handed to the event loop as it arrived
(`adopt`, the aiohttp server's `connect_accepted_socket`), which serves it as it
serves every other host: bodies, streams, hijacked connections, errors. Only whole
request heads without a body are answered here; a partial head is handed over too.
h11 parses the heads and writes the answers.
"""

from __future__ import annotations

import email.utils
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qsl, unquote

import h11

from shoal.api.fastreads import DOCKER_HEADERS, Answer
from shoal.log import get_logger

# Longest request head looked at; a longer one is the loop's.
MAX_HEAD = 16 * 1024
# How long a kept-alive connection may stay idle here (aiohttp's keepalive_timeout).
IDLE_TIMEOUT_S = 75.0
SELECT_TIMEOUT_S = 1.0
BACKLOG = 128
# How long stop() waits for the thread (woken at once; it never blocks for long).
STOP_TIMEOUT_S = 5.0

log = get_logger("shoal.api.frontdoor")

Answerer = Callable[[str, str, Mapping[str, str]], Answer | None]
Observer = Callable[[str, str, int, float], None]


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    last: float
    out: bytes = b""
    close_after: bool = False
    events: int = field(default=selectors.EVENT_READ)


@dataclass(frozen=True, slots=True)
class Head:
    """A request head the front door may answer; `conn` parsed it and writes its answer."""

    method: str
    path: str
    query: dict[str, str]
    keep_alive: bool
    conn: h11.Connection


def parse_head(head: bytes) -> Head | None:
    """A request head the front door may answer (GET or HEAD, no body, no upgrade),
    parsed by h11, or None (the loop answers it, or says what is wrong with it)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request) or event.method not in (b"GET", b"HEAD"):
        return None
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in event.headers}
    if any(name in headers for name in ("transfer-encoding", "upgrade", "expect")):
        return None
    if headers.get("content-length", "0") != "0":
        return None
    path, _, qs = event.target.decode("latin-1").partition("?")
    if not path.startswith("/"):
        return None
    query: dict[str, str] = {}
    for k, v in parse_qsl(qs, keep_blank_values=True):
        query.setdefault(k, v)  # the first value, as aiohttp's query.get
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = event.http_version == b"1.1" and "close" not in tokens  # as h11 keeps it
    return Head(event.method.decode(), unquote(path), query, keep_alive, conn)


def render(head: Head, answer: Answer) -> bytes:
    """The bytes of an answer (by h11, on the connection that parsed its request), with
    the headers aiohttp and docker_headers would send."""
    headers = [
        *answer.headers,
        ("Content-Length", str(len(answer.body))),
        ("Date", email.utils.formatdate(usegmt=True)),
        *DOCKER_HEADERS,
    ]
    conn = head.conn
    reason = HTTPStatus(answer.status).phrase.encode()
    out = conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason))
    if head.method != "HEAD":
        out += conn.send(h11.Data(data=answer.body))
    return out + conn.send(h11.EndOfMessage())


class FrontDoor:
    """Listens on `path` on its own thread; answers what `answer` can, hands every
    other connection to `adopt` (called on this thread; it must pass the socket to the
    event loop), and times each answer with `observe(method, route, status, s)`."""

    def __init__(
        self,
        path: Path,
        answer: Answerer,
        adopt: Callable[[socket.socket], None],
        observe: Observer,
    ) -> None:
        self.path = path
        self._answer, self._adopt, self._observe = answer, adopt, observe
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._conns: dict[int, _Conn] = {}
        self.answered = 0  # requests answered here
        self.handed_over = 0  # connections handed to the loop

    def start(self) -> None:
        """Bind and listen (the socket's file mode 0660), then serve on a thread."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o660)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._thread = threading.Thread(target=self._run, name="api-front-door", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; close the listener and the connections not handed over."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("front door: its thread did not stop", timeout_s=STOP_TIMEOUT_S)
            self._thread = None
        self._wake_r.close()
        self._wake_w.close()

    # the thread -----------------------------------------------------------------------
    def _run(self) -> None:
        listener = self._listener
        assert listener is not None
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        last_sweep = time.monotonic()
        try:
            while not self._stopping:
                for key, mask in sel.select(SELECT_TIMEOUT_S):
                    if key.fileobj is listener:
                        self._accept(sel, listener)
                    elif key.fileobj is self._wake_r:
                        continue
                    else:
                        conn: _Conn = key.data
                        try:
                            if mask & selectors.EVENT_WRITE:
                                self._send(sel, conn)
                            elif mask & selectors.EVENT_READ:
                                self._read(sel, conn)
                        except Exception as e:  # one connection's fault, not the door's
                            log.warning("front door: closing a connection", error=repr(e))
                            self._close(sel, conn)
                now = time.monotonic()
                if now - last_sweep >= SELECT_TIMEOUT_S:
                    last_sweep = now
                    for conn in list(self._conns.values()):
                        if not conn.out and now - conn.last > IDLE_TIMEOUT_S:
                            self._close(sel, conn)
        finally:
            for conn in list(self._conns.values()):
                self._close(sel, conn)
            sel.close()
            listener.close()

    def _accept(self, sel: selectors.BaseSelector, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors: try again at the next turn
                log.warning("front door: accept failed", error=repr(e))
                return
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic())
            self._conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_HEAD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(sel, conn)
            return
        if not data:
            self._close(sel, conn)
            return
        end = data.find(b"\r\n\r\n")
        if end < 0:
            self._hand_over(sel, conn)
            return
        started = time.perf_counter()
        head = parse_head(data[: end + 4])
        ans = None
        if head is not None:
            try:
                ans = self._answer(head.method, head.path, head.query)
            except Exception as e:  # the loop's route then answers (or says what failed)
                log.warning("front door: answer failed", path=head.path, error=repr(e))
        if head is None or ans is None:
            self._hand_over(sel, conn)
            return
        _recv_exactly(conn.sock, end + 4)  # take the head the answer is for
        conn.out = render(head, ans)
        conn.close_after = not head.keep_alive
        conn.last = time.monotonic()
        self.answered += 1
        self._send(sel, conn)
        self._observe(head.method, ans.route, ans.status, time.perf_counter() - started)

    def _send(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            while conn.out:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(sel, conn)
            return
        conn.last = time.monotonic()
        if conn.out:
            self._want(sel, conn, selectors.EVENT_WRITE)
        elif conn.close_after:
            self._close(sel, conn)
        else:
            self._want(sel, conn, selectors.EVENT_READ)

    def _want(self, sel: selectors.BaseSelector, conn: _Conn, events: int) -> None:
        if conn.events != events:
            conn.events = events
            sel.modify(conn.sock, events, conn)

    def _hand_over(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        sel.unregister(conn.sock)
        self._conns.pop(conn.sock.fileno(), None)
        self.handed_over += 1
        try:
            self._adopt(conn.sock)
        except Exception as e:  # the loop is gone (stopping)
            log.warning("front door: hand-over failed", error=repr(e))
            conn.sock.close()

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        if self._conns.pop(conn.sock.fileno(), None) is not None:
            sel.unregister(conn.sock)
        conn.sock.close()


def _recv_exactly(sock: socket.socket, n: int) -> None:
    """Take n bytes already in the socket's buffer (peeked)."""
    while n > 0:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("closed while its request was taken")
        n -= len(chunk)
