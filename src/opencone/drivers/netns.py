"""Network namespaces of computers: a network of their own, with nothing in it but loopback.

A computer's browser runs in a namespace made for it, so the only thing it can
connect to is what the server put there: its forwarding proxy's listening
socket. The host's loopback (the API, other local services), other computers'
DevTools ports and forwarders, and every other address are simply not on its
network; the forwarder decides, by the egress policy, where its traffic goes.

The server makes the namespace (``unshare(CLONE_NEWNET)``), keeps it by a file
descriptor, and creates sockets inside it by switching its own thread into it
for the few microseconds of a ``socket()`` call: a socket stays in the namespace
it was made in, wherever it is used from. A child process is started inside it
by entering it between fork and exec. All of this needs CAP_SYS_ADMIN (a server
running as root); ``available()`` says whether this server has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import functools
import logging
import os
import socket
import struct
from collections.abc import Iterator

log = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _own_namespace() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@functools.cache
def _host() -> int:
    """The namespace the server itself lives in (read once, before any switch)."""
    return _own_namespace()


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0)))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


class NetNamespace:
    """One network namespace, held open by a descriptor until ``close``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def create(cls) -> NetNamespace:
        """A new namespace with its loopback up (and nothing else)."""
        host = _host()
        _check(_libc.unshare(_CLONE_NEWNET))  # (this thread only, and only until the setns below)
        try:
            _loopback_up()
            fd = _own_namespace()
        finally:
            _check(_libc.setns(host, _CLONE_NEWNET))
        return cls(fd)

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        """This thread inside the namespace. Nothing may await in here: on the event loop's
        thread every other task would run inside it too."""
        host = _host()
        _check(_libc.setns(self.fd, _CLONE_NEWNET))
        try:
            yield
        finally:
            _check(_libc.setns(host, _CLONE_NEWNET))

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        with self._inside():
            return socket.socket(family, kind)

    def listen(self, port: int = 0, backlog: int = 512) -> socket.socket:
        """A listening TCP socket on the namespace's 127.0.0.1."""
        sock = self.socket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def connect(self, port: int, host: str = "127.0.0.1") -> socket.socket:
        """A TCP connection to ``host:port`` as seen from inside the namespace."""
        sock = self.socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def enter(self) -> None:
        """For a ``preexec_fn``: move the child (between fork and exec) into the namespace."""
        _check(_libc.setns(self.fd, _CLONE_NEWNET))

    def close(self) -> None:
        """Let go of the namespace; it ends once no process or socket is left in it."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


@functools.cache
def available() -> bool:
    """Whether this server may make namespaces for its computers (it needs CAP_SYS_ADMIN)."""
    try:
        NetNamespace.create().close()
    except OSError as exc:
        log.warning("computers share the host's network (they reach it only through their proxy and its "
                    "egress policy): this server may not create network namespaces (%s); run it as root for "
                    "network isolation", exc.strerror or exc)
        return False
    return True
