"""Sockets bound inside another network namespace.

A thread's network namespace is its own (setns(2) acts on the calling thread), and a
socket stays in the namespace it was created in. So a short-lived thread enters the
task's namespace, creates and binds the sockets, and ends; the event loop then serves
them from the daemon's thread, which never leaves the node's namespace.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import struct
import threading

from pyroute2 import IPRoute
from pyroute2.netns import setns

# Queued TCP connections per task resolver.
TCP_BACKLOG = 16
SIOCGIFFLAGS = 0x8913  # linux/sockios.h
IFF_UP = 0x1


class NetnsGone(Exception):
    """The namespace's path names nothing any more (the task ended meanwhile)."""


def _loopback_up(sock: socket.socket) -> bool:
    # SIOCGIFFLAGS answers for the socket's namespace (/sys would be the node's).
    req = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0))
    return bool(struct.unpack("16sH", req[:18])[1] & IFF_UP)


def _bind_here(addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if not _loopback_up(udp):
            # 127.0.0.11 answers only once the namespace's loopback is up; the plumbing
            # normally did it, but a resolver nobody can reach would fail silently.
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        udp.bind((addr, port))
        tcp.bind((addr, port))
        tcp.listen(TCP_BACKLOG)
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


def _in_netns(netns: str, addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    try:
        fd = os.open(netns, os.O_RDONLY)
    except FileNotFoundError as e:
        raise NetnsGone(netns) from e
    try:
        setns(fd, flags=0)
    finally:
        os.close(fd)
    return _bind_here(addr, port)


async def bind_in_netns(netns: str, addr: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket bound at addr:port inside the namespace
    named by the path `netns` (NetnsGone when it is gone)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[socket.socket, socket.socket]] = loop.create_future()

    def settle(result: tuple[socket.socket, socket.socket] | None, error: BaseException | None):
        if done.cancelled():
            if result is not None:
                for s in result:
                    s.close()
        elif error is not None:
            done.set_exception(error)
        else:
            assert result is not None
            done.set_result(result)

    def run() -> None:
        # Never returns to the node's namespace: the thread ends here.
        try:
            result = _in_netns(netns, addr, port)
        except BaseException as e:
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="shoal-netns-bind", daemon=True).start()
    return await done
