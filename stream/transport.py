"""Thin ZeroMQ helpers shared by the publishers and subscribers (imported only where sockets are made).

Publishers are XPUB sockets: they behave like PUB for subscribers (drop rather than block), and in
addition (1) receive subscription messages, so a publisher can wait for its first subscriber instead of
guessing a slow-joiner delay, and (2) with ``XPUB_NODROP`` a send that would exceed the high-water mark
fails with EAGAIN instead of being discarded silently, so the publisher counts its own drops. Sends are
always non-blocking. Every socket is made with ``LINGER 0`` so that closing never hangs.

The publishing side of a rig (used by ``replay`` and by :mod:`spikereveal.stream.driver`) is split the same
way: :class:`RigStreams` (no sockets: stream ids, sequence numbers, drop counting, heartbeats) and
:class:`RigSockets` (the two bound XPUB sockets it sends on).

Every socket takes optional CURVE keys (:mod:`spikereveal.stream.security`): ``ServerKeys`` for the ones
that bind, ``ClientKeys`` for the ones that connect.

What a subscriber can cost: an XPUB keeps every distinct topic its subscribers subscribed to (in libzmq's
subscription trie, also in ``XPUB_MANUAL`` mode, which stores each received subscription for its
termination handling), so a stranger sending 300 k random topics grows serve by ~1 GB. serve's output is a
:class:`GuardedPublisher`: it counts the distinct topics held (libzmq reports each new one and each one no
subscriber holds anymore), refuses topics the stream never publishes (counted), drops a peer whose
subscription message is longer than ``MAX_TOPIC_BYTES`` (``ZMQ_MAXMSGSIZE``), and when more than
``max_subscriptions`` topics are held it closes and re-binds the socket: the memory is released, viewers
reconnect and re-subscribe by themselves (ZeroMQ does it; they see the gap in sequence numbers).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from spikereveal.errors import ConfigError
from spikereveal.kernels.timing import index_to_time
from spikereveal.stream.protocol import Heartbeat, Kind, RgbExposure, SpikeBlock, encode

logger = logging.getLogger(__name__)


def _zmq():
    import zmq  # a hard dependency, imported late so that `spikereveal --help` stays light

    return zmq


def open_publisher(context, endpoint: str, send_hwm: int = 1000, count_drops: bool = True, keys=None,
                   max_topic_bytes: int | None = None):
    """Bind an XPUB socket (linger 0) on ``endpoint``; returns the socket.

    ``count_drops``: XPUB_NODROP, so :func:`publish` reports a full queue (the message is then dropped for
    every subscriber: one stalled subscriber costs all of them that message). Without it the socket drops
    per subscriber, silently, like plain PUB; subscribers still see the loss through heartbeats.
    ``keys``: a ``security.ServerKeys`` (CURVE server; the context needs a started authenticator).
    ``max_topic_bytes``: a peer sending a longer (subscription) message is disconnected (ZMQ_MAXMSGSIZE).
    """
    zmq = _zmq()
    socket = context.socket(zmq.XPUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, int(send_hwm))
    socket.setsockopt(zmq.XPUB_NODROP, int(bool(count_drops)))
    if max_topic_bytes is not None:
        socket.setsockopt(zmq.MAXMSGSIZE, int(max_topic_bytes) + 1)  # + the subscribe/cancel byte
    try:
        if keys is not None:
            from spikereveal.stream.security import apply_server

            apply_server(socket, keys)
        socket.bind(endpoint)
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise ConfigError(f"cannot bind {endpoint!r}: {exc}; choose a free port or another endpoint") from None
    except BaseException:
        socket.close(linger=0)
        raise
    return socket


def open_subscriber(context, endpoint: str, topics: tuple[bytes, ...] = (b"",), receive_hwm: int = 1000,
                    max_message_bytes: int | None = None, keys=None):
    """Connect a SUB socket (linger 0) to ``endpoint`` subscribed to ``topics`` (all by default).

    ``max_message_bytes``: ZMQ_MAXMSGSIZE, so that ``receive_hwm`` messages bound the buffer in bytes (a
    publisher sending a larger message is disconnected by ZeroMQ). ``keys``: a ``security.ClientKeys`` (CURVE
    client of that publisher)."""
    zmq = _zmq()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVHWM, int(receive_hwm))
    if max_message_bytes is not None:
        socket.setsockopt(zmq.MAXMSGSIZE, int(max_message_bytes))
    for topic in topics:
        socket.setsockopt(zmq.SUBSCRIBE, topic)
    try:
        if keys is not None:
            from spikereveal.stream.security import apply_client

            apply_client(socket, keys)
        socket.connect(endpoint)
    except BaseException as exc:
        socket.close(linger=0)
        if not isinstance(exc, zmq.ZMQError):
            raise
        raise ConfigError(f"cannot connect to {endpoint!r}: {exc}") from None
    return socket


#: subscription messages longer than this (topic bytes) disconnect their peer on serve's output
MAX_TOPIC_BYTES = 1023  # MAXMSGSIZE also bounds the CURVE handshake (INITIATE is ~250 bytes)


class SubscriptionLedger:
    """What an XPUB's subscribers made it keep (pure: fed the subscription messages the socket reports).

    libzmq reports the first subscription to each distinct topic (``b"\\x01" + topic``) and the cancel of a
    topic no subscriber holds anymore (``b"\\x00" + topic``), so ``held`` is the number of distinct topics the
    socket keeps. A topic that is not a prefix of one of ``topics`` (what the stream publishes; the empty
    topic is one) is refused: it can never match, it is counted in ``refused``. :meth:`on_message` returns
    True once more than ``max_subscriptions`` topics are held: the caller re-binds the socket and calls
    :meth:`reset`.
    """

    def __init__(self, topics: tuple[bytes, ...], max_subscriptions: int):
        if isinstance(max_subscriptions, bool) or not isinstance(max_subscriptions, int) or max_subscriptions < 1:
            raise ConfigError(f"max_subscriptions must be a positive integer, got {max_subscriptions!r}")
        self.allowed = frozenset(t[:n] for t in topics for n in range(len(t) + 1))
        self.max_subscriptions = max_subscriptions
        self._held_allowed: set[bytes] = set()
        self._held_refused = 0
        self.refused = 0  # subscriptions to topics the stream never publishes
        self.resets = 0  # times the socket was re-bound because too many topics were held

    @property
    def held(self) -> int:
        return len(self._held_allowed) + self._held_refused

    def on_message(self, message: bytes) -> bool:
        kind, topic = message[:1], bytes(message[1:])
        if kind == b"\x01":
            if topic in self.allowed:
                self._held_allowed.add(topic)
            else:
                self.refused += 1
                self._held_refused += 1
                if self.refused == 1:
                    logger.warning("a subscriber subscribed to %r, which this stream never publishes; refused and "
                                   "counted in subscriptions_refused (logged once)", topic[:32])
        elif kind == b"\x00":
            if topic in self.allowed:
                self._held_allowed.discard(topic)
            elif self._held_refused:
                self._held_refused -= 1
        return self.held > self.max_subscriptions

    def reset(self) -> None:
        self._held_allowed.clear()
        self._held_refused = 0
        self.resets += 1


class GuardedPublisher:
    """serve's output XPUB with a bound on what subscribers can cost (see the module doc).

    At most ``max_subscriptions`` distinct topics are kept across poll rounds (plus what arrives within one
    round), each at most ``MAX_TOPIC_BYTES`` long. ``publish(parts) -> bool`` as :func:`publish`; call
    :meth:`poll` every loop round (it reads the subscription messages). One thread only.
    """

    _DRAIN_LIMIT = 10_000  # subscription messages read per poll, so a flood cannot hold the loop

    def __init__(self, context, endpoint: str, send_hwm: int = 1000, count_drops: bool = True,
                 topics: tuple[bytes, ...] = (b"",), max_subscriptions: int = 64, keys=None):
        self.ledger = SubscriptionLedger(topics, max_subscriptions)
        self._context, self._send_hwm, self._count_drops, self._keys = context, send_hwm, count_drops, keys
        self.socket = open_publisher(context, endpoint, send_hwm, count_drops, keys, MAX_TOPIC_BYTES)
        self.endpoint = bound_endpoint(self.socket)  # the port is kept across re-binds

    def publish(self, parts) -> bool:
        return publish(self.socket, parts)

    def poll(self) -> None:
        zmq = _zmq()
        for _ in range(self._DRAIN_LIMIT):
            try:
                message = self.socket.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.ledger.on_message(message):
                self._rebind()
                return

    def _rebind(self) -> None:
        logger.warning("the output %s holds more than %d subscription topics: re-bound to release them "
                       "(viewers reconnect by themselves; counted in output_resets)", self.endpoint,
                       self.ledger.max_subscriptions)
        self.socket.close(linger=0)
        self.socket = None
        self.ledger.reset()
        deadline = time.monotonic() + 5.0
        while True:  # the old listener closes in ZeroMQ's I/O thread: the port may be busy for a moment
            try:
                self.socket = open_publisher(self._context, self.endpoint, self._send_hwm, self._count_drops,
                                             self._keys, MAX_TOPIC_BYTES)
                return
            except ConfigError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def close(self, linger: int = 0) -> None:
        if self.socket is not None:
            self.socket.close(linger=linger)
            self.socket = None


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


# -- the publishing side of a rig ----------------------------------------------------------------------------
def random_stream_id() -> int:
    """A random 32-bit stream id, so that a restarted publisher is seen as a restart."""
    return int.from_bytes(os.urandom(4), "little")


@dataclass
class PublishStats:
    """What :class:`RigStreams` counts (publishers extend it with their own fields)."""

    spike_messages: int = 0
    spike_frames: int = 0
    exposures: int = 0
    heartbeats: int = 0
    dropped_messages: int = 0  # refused by a high-water mark (counted, never waited for)
    spike_stream_id: int = 0
    rgb_stream_id: int = 0
    drops_by_kind: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class RigStreams:
    """Turns a rig's data into protocol messages on two streams and hands them to ``send_spike`` /
    ``send_rgb`` (each returns False when the message was dropped; the drop is counted in ``stats``).

    Owns the sequence numbers (a dropped message still uses its number up, so the receiver sees the gap)
    and the stream positions that :meth:`heartbeats` announce. No sockets, no threads: call it from one
    thread. ``stats.spike_stream_id`` / ``rgb_stream_id`` name the streams (0 is a valid id).
    """

    def __init__(self, send_spike: Callable[[list], bool], send_rgb: Callable[[list], bool], clock,
                 stats: PublishStats, stream_clock_ns: int = 0):
        self._send = {Kind.SPIKE_BLOCK: send_spike, Kind.RGB_EXPOSURE: send_rgb}
        self.clock = clock
        self.stats = stats
        self.spike_seq = 0  # next sequence number of each stream
        self.rgb_seq = 0
        self.spike_position = 0  # one past the last frame index sent
        self.last_frame_id = -1
        self.stream_clock_ns = int(stream_clock_ns)  # spike-clock time of the last frame sent

    def _emit(self, kind: Kind, parts: list) -> None:
        if not self._send[kind](parts):
            self.stats.dropped_messages += 1
            name = kind.name.lower()
            self.stats.drops_by_kind[name] = self.stats.drops_by_kind.get(name, 0) + 1

    def spike_block(self, first_index: int, packed: np.ndarray, *, t0_ns: int, rate_hz: float, height: int,
                    width: int, bit_order: str = "little", flip_rows: bool = False) -> int:
        """Publish frames ``first_index ..`` (packed, in the stated layout); returns the send time."""
        block = SpikeBlock(
            stream_id=self.stats.spike_stream_id, seq=self.spike_seq, first_index=int(first_index),
            t0_ns=int(t0_ns), rate_hz=float(rate_hz), height=height, width=width, packed=packed,
            bit_order=bit_order, flip_rows=bool(flip_rows), send_time_ns=self.clock.now_ns(),
        )
        parts = encode(block)  # validates before the sequence number is used
        self.spike_seq += 1  # used up even if the send is refused: the receiver must see the gap
        self.spike_position = block.stop_index
        self.stream_clock_ns = int(index_to_time(block.stop_index - 1, block.t0_ns, block.rate_hz))
        self.stats.spike_messages += 1
        self.stats.spike_frames += block.frame_count
        self._emit(Kind.SPIKE_BLOCK, parts)
        return block.send_time_ns

    def exposure(self, frame_id: int, start_ns: int, duration_ns: int, image: np.ndarray) -> int:
        """Publish one uint8 (H, W, 3) BGR exposure; returns the send time."""
        message = RgbExposure(
            stream_id=self.stats.rgb_stream_id, seq=self.rgb_seq, frame_id=int(frame_id), start_ns=int(start_ns),
            duration_ns=int(duration_ns), image=image, send_time_ns=self.clock.now_ns(),
        )
        parts = encode(message)
        self.rgb_seq += 1
        self.last_frame_id = message.frame_id
        self.stats.exposures += 1
        self._emit(Kind.RGB_EXPOSURE, parts)
        return message.send_time_ns

    def heartbeats(self) -> None:
        """Publish one heartbeat per stream (on its own socket) with its last sequence number."""
        now = self.clock.now_ns()
        spike = Heartbeat(
            stream_id=self.stats.spike_stream_id, stream_kind=Kind.SPIKE_BLOCK, last_seq=self.spike_seq - 1,
            position=self.spike_position, clock_ns=self.stream_clock_ns, send_time_ns=now,
        )
        rgb = Heartbeat(
            stream_id=self.stats.rgb_stream_id, stream_kind=Kind.RGB_EXPOSURE, last_seq=self.rgb_seq - 1,
            position=self.last_frame_id, clock_ns=self.stream_clock_ns, send_time_ns=now,
        )
        self.stats.heartbeats += 2
        self._emit(Kind.SPIKE_BLOCK, encode(spike))
        self._emit(Kind.RGB_EXPOSURE, encode(rgb))


class RigSockets:
    """The two XPUB publishers of a rig (spike blocks, RGB exposures), linger 0; a context manager.

    ``spike_endpoint`` / ``rgb_endpoint`` are the endpoints really bound (``tcp://127.0.0.1:*`` resolves).
    Use from one thread (ZeroMQ sockets are not thread-safe).
    """

    def __init__(self, spike_endpoint: str, rgb_endpoint: str, send_hwm: int = 1000, count_drops: bool = True,
                 context=None, keys=None):
        zmq = _zmq()
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.spike_socket = self.rgb_socket = None
        self._authenticator = None
        try:
            if keys is not None:  # CURVE: only subscribers whose public key is in the allow-list folder
                from spikereveal.stream.security import start_authenticator

                self._authenticator = start_authenticator(self.context, keys)
            self.spike_socket = open_publisher(self.context, spike_endpoint, send_hwm, count_drops, keys)
            self.rgb_socket = open_publisher(self.context, rgb_endpoint, send_hwm, count_drops, keys)
        except BaseException:
            self.close()
            raise
        self.spike_endpoint = bound_endpoint(self.spike_socket)
        self.rgb_endpoint = bound_endpoint(self.rgb_socket)

    def send_spike(self, parts) -> bool:
        return publish(self.spike_socket, parts)

    def send_rgb(self, parts) -> bool:
        return publish(self.rgb_socket, parts)

    def poll(self) -> None:
        """Keep the XPUB subscription queues empty (call now and then, e.g. with the heartbeats)."""
        drain_subscriptions(self.spike_socket)
        drain_subscriptions(self.rgb_socket)

    def wait_for_subscribers(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """True once both sockets have a subscriber; False on timeout or stop."""
        return wait_for_subscribers([self.spike_socket, self.rgb_socket], timeout_s, stop)

    def close(self) -> None:
        for socket in (self.spike_socket, self.rgb_socket):
            if socket is not None:
                socket.close(linger=0)
        self.spike_socket = self.rgb_socket = None
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_context and self.context is not None:
            self.context.term()
            self.context = None

    def __enter__(self) -> "RigSockets":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
