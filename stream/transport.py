"""Thin ZeroMQ helpers shared by the publishers and subscribers (imported only where sockets are made).

Publishers are XPUB sockets: they behave like PUB for subscribers (drop rather than block), and in
addition (1) receive subscription messages, so a publisher can wait for its first subscriber instead of
guessing a slow-joiner delay, and (2) with ``XPUB_NODROP`` a send that would exceed the high-water mark
fails with EAGAIN instead of being discarded silently, so the publisher counts its own drops. Sends are
always non-blocking. Every socket is made with ``LINGER 0`` so that closing never hangs.
"""

from __future__ import annotations

import logging
import threading
import time

from spikereveal.errors import ConfigError

logger = logging.getLogger(__name__)


def _zmq():
    import zmq  # a hard dependency, imported late so that `spikereveal --help` stays light

    return zmq


def open_publisher(context, endpoint: str, send_hwm: int = 1000, count_drops: bool = True):
    """Bind an XPUB socket (linger 0) on ``endpoint``; returns the socket.

    ``count_drops``: XPUB_NODROP, so :func:`publish` reports a full queue (the message is then dropped for
    every subscriber: one stalled subscriber costs all of them that message). Without it the socket drops
    per subscriber, silently, like plain PUB; subscribers still see the loss through heartbeats.
    """
    zmq = _zmq()
    socket = context.socket(zmq.XPUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, int(send_hwm))
    socket.setsockopt(zmq.XPUB_NODROP, int(bool(count_drops)))
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise ConfigError(f"cannot bind {endpoint!r}: {exc}; choose a free port or another endpoint") from None
    return socket


def open_subscriber(context, endpoint: str, topics: tuple[bytes, ...] = (b"",), receive_hwm: int = 1000):
    """Connect a SUB socket (linger 0) to ``endpoint`` subscribed to ``topics`` (all by default)."""
    zmq = _zmq()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, int(receive_hwm))
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic)
    try:
        socket.connect(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise ConfigError(f"cannot connect to {endpoint!r}: {exc}") from None
    return socket


def bound_endpoint(socket) -> str:
    """The endpoint a socket really bound (resolves ``tcp://127.0.0.1:*`` to its port)."""
    zmq = _zmq()
    endpoint = socket.getsockopt(zmq.LAST_ENDPOINT)
    return endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)


def publish(socket, parts) -> bool:
    """Send a multipart message without blocking; False when the high-water mark refused it (dropped)."""
    zmq = _zmq()
    try:
        socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True


def drain_subscriptions(socket) -> int:
    """Read pending (un)subscription messages of an XPUB socket; returns the net change in subscriptions."""
    zmq = _zmq()
    change = 0
    while True:
        try:
            message = socket.recv(flags=zmq.NOBLOCK)
        except zmq.Again:
            return change
        if message[:1] == b"\x01":
            change += 1
        elif message[:1] == b"\x00":
            change -= 1


def wait_for_subscribers(sockets, timeout_s: float, stop: threading.Event | None = None) -> bool:
    """Wait until every XPUB socket in ``sockets`` has received a subscription; False on timeout or stop."""
    zmq = _zmq()
    waiting = {id(s): s for s in sockets}
    poller = zmq.Poller()
    for socket in sockets:
        poller.register(socket, zmq.POLLIN)
    deadline = time.monotonic() + timeout_s
    while waiting:
        if stop is not None and stop.is_set():
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for socket, _ in poller.poll(timeout=min(remaining, 0.05) * 1000):
            if drain_subscriptions(socket) > 0:
                waiting.pop(id(socket), None)
    return True
