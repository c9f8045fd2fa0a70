"""Replay a recording into ``serve`` on loopback, in one process: the live pipeline end to end on one machine.

:func:`run_loopback` starts ``serve`` (its engine loaded before streaming starts) on ipc endpoints in a private
temp folder, replays the recording as a live rig at ``speed`` x real time into it and returns serve's
counters and latency rows. ``spikereveal demo`` (:mod:`spikereveal.demo`) and ``bench pipeline`` drive it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from spikereveal.errors import SpikeRevealError

__all__ = ["run_loopback", "LoopbackRun", "LoopbackObserver"]

logger = logging.getLogger(__name__)


class LoopbackObserver(Protocol):
    """Watches a loopback run from outside (e.g. ``bench pipeline``'s wire monitor)."""

    def before_replay(self, server, replay) -> float | None:
        """Serve is ready and subscribed to the replay, nothing sent yet; may return a new speed. An observer
        subscribing to the replay must wait for its own subscription before returning (the replay starts
        at once)."""

    def after_serve(self) -> None:
        """Serve has stopped (every output it will publish is published)."""


@dataclass
class LoopbackRun:
    counters: dict  # serve's counters
    replay_stats: object  # ReplayStats of the replay
    speed: float  # the replay speed really used
    engine_ready_s: float  # time.perf_counter() when serve was ready (engine loaded)
    finished_s: float  # time.perf_counter() when serve had stopped
    serve_config: object = field(repr=False, default=None)
    latency_rows: list = field(repr=False, default_factory=list)  # serve's LatencyLog rows, in publish order


def run_loopback(recording_path, serve_overrides: dict, *, speed: float = 1.0, block_frames: int = 16,
                 runner_factory: Callable | None = None, observer: LoopbackObserver | None = None,
                 progress: Callable[[str], None] | None = None,
                 on_published: Callable[[int], None] | None = None) -> LoopbackRun:
    """Replay the recording at ``recording_path`` into ``serve`` on private ipc endpoints on this host.

    ``serve_overrides``: :func:`spikereveal.stream.config.load_serve_config` overrides (the endpoints and
    the spike geometry, read from the recording, are filled in here). Serve loads its engine before the
    replay starts and stops ``idle_timeout_s`` after the replay's last message (set it in the overrides),
    finishing the queued exposures. ``runner_factory``: as for :class:`spikereveal.stream.serve.Server`.
    ``on_published(done)``: called every ``_PROGRESS_PERIOD_S`` from the engine being ready until serve stops
    (and once more then) with the number of exposures serve has published.
    """
    from spikereveal.recording import open_recording
    from spikereveal.stream.config import load_serve_config
    from spikereveal.stream.replay import LiveReplay, ReplayConfig
    from spikereveal.stream.serve import Server

    say = progress or (lambda message: None)
    ipc_dir = tempfile.mkdtemp(prefix="sr-demo-", dir="/tmp")  # ipc paths are limited to ~100 bytes
    try:
        with open_recording(recording_path, strict=False) as recording:
            spike = recording.meta.spike
            serve_config = load_serve_config(
                None, spike_endpoint=f"ipc://{ipc_dir}/spikes", rgb_endpoint=f"ipc://{ipc_dir}/rgb",
                output_endpoint=f"ipc://{ipc_dir}/sharp", spike_height=spike.height, spike_width=spike.width,
                **serve_overrides)
            replay_config = ReplayConfig(speed=speed, block_frames=block_frames, wait_for_subscribers=True,
                                         start_delay_s=0.0, subscriber_timeout_s=60.0, drain_s=0.2)
            with LiveReplay(recording, serve_config.spike_endpoint, serve_config.rgb_endpoint,
                            replay_config) as replay:
                # decode the exposure images before serve's idle clock starts: on a small machine decoding 40
                # rsb frames outlasts serve's idle_timeout_s, and serve stopped before the first message
                replay.prepare()
                server = Server(serve_config, runner_factory=runner_factory)
                result: dict = {}
                errors: list = []

                def run_server():
                    try:
                        result["counters"] = server.run()
                    except BaseException as exc:  # reported by the caller's thread
                        errors.append(exc)
                    finally:
                        server.ready.set()

                say(f"loading the {serve_config.engine.engine} engine" if runner_factory is None
                    else "loading the runner")
                thread = threading.Thread(target=run_server, name="loopback-serve", daemon=True)
                thread.start()
                server.ready.wait()
                if errors:
                    thread.join()
                    raise errors[0]
                engine_ready = time.perf_counter()
                watcher = _watch_published(server, thread, on_published) if on_published is not None else None
                try:
                    if observer is not None:
                        # serve's subscriptions first, so that an observer's cannot stand in for them
                        if not replay.sockets.wait_for_subscribers(replay_config.subscriber_timeout_s):
                            raise SpikeRevealError("serve did not subscribe to the replay within "
                                                   f"{replay_config.subscriber_timeout_s} s")
                        speed = observer.before_replay(server, replay) or speed
                        replay.config = dataclasses.replace(replay_config, speed=speed, wait_for_subscribers=False)
                    pace = "unpaced" if math.isinf(speed) else f"{speed:g}x real time"
                    say(f"replaying at {pace} into serve")
                    replay_stats = replay.run()
                    say("finishing the queued exposures")
                    thread.join()
                finally:
                    if observer is not None:
                        observer.after_serve()
                    if watcher is not None:
                        watcher.join()
            if errors:
                raise errors[0]
    finally:
        shutil.rmtree(ipc_dir, ignore_errors=True)
    return LoopbackRun(result["counters"], replay_stats, speed, engine_ready, time.perf_counter(), serve_config,
                       server.latency_rows())


_PROGRESS_PERIOD_S = 0.25


def _watch_published(server, serve_thread: threading.Thread, on_published: Callable[[int], None]) -> threading.Thread:
    """A thread reporting ``server.exposures_done`` to ``on_published`` until ``serve_thread`` ends."""
    def watch():
        last = None
        while serve_thread.is_alive():
            done = server.exposures_done
            if done != last:
                on_published(done)
                last = done
            serve_thread.join(_PROGRESS_PERIOD_S)
        if server.exposures_done != last:
            on_published(server.exposures_done)

    watcher = threading.Thread(target=watch, name="loopback-progress", daemon=True)
    watcher.start()
    return watcher
