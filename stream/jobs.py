"""Between the synchroniser and inference: the bounded job queue and the in-process inference thread.

* :class:`JobQueue` -- the bounded FIFO between the synchroniser and inference. When inference is slower
  than the exposure rate it fills; the policy is explicit (``drop_oldest`` by default, or ``drop_newest``)
  and every dropped exposure is counted. Memory: ``capacity`` windows waiting + the ones being inferred.
* :class:`InferenceThread` -- consumes the queue in a thread, so the receive loop never waits for inference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable

from spikereveal.errors import ConfigError, SpikeRevealError
from spikereveal.stream.stage import EngineLoadError, ExposureResult
from spikereveal.stream.sync import ReadyJob

__all__ = ["JobQueue", "job_nbytes", "InferenceThread"]

logger = logging.getLogger(__name__)


def job_nbytes(job) -> int:
    """The bytes a queued job holds alive: its spike window and its RGB image."""
    return int(job.packed.nbytes) + int(job.image.nbytes)


class JobQueue:
    """Bounded, thread-safe FIFO of ReadyJobs with a stated policy when full (see the module doc).

    Bounded in jobs (``capacity_jobs``) and in bytes (``max_bytes``: spike windows + images, see
    :func:`job_nbytes`); whichever is hit first applies the policy, and every drop is counted in ``dropped``.
    While the engine warms up (``begin_warmup`` .. ``end_warmup``) up to ``warmup_capacity_jobs`` jobs wait
    (still within ``max_bytes``) instead of being dropped for capacity; a drop then counts in
    ``warmup_dropped``, never in ``dropped``. That backlog is then processed, not trimmed: the bound returns
    to ``capacity_jobs`` once inference has caught up with it.
    """

    def __init__(self, capacity_jobs: int = 2, when_full: str = "drop_oldest", max_bytes: int | None = None,
                 warmup_capacity_jobs: int = 16):
        if isinstance(capacity_jobs, bool) or not isinstance(capacity_jobs, int) or capacity_jobs < 1:
            raise ConfigError(f"the job queue needs a capacity >= 1, got {capacity_jobs!r}")
        if when_full not in ("drop_oldest", "drop_newest"):
            raise ConfigError(f"when_full must be drop_oldest or drop_newest, got {when_full!r}")
        self.capacity = capacity_jobs
        self.when_full = when_full
        self.max_bytes = max_bytes
        self.warmup_capacity = max(capacity_jobs, warmup_capacity_jobs)
        self.warming_up = False
        self._limit = capacity_jobs  # above capacity_jobs only while a warm-up backlog drains
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.warmup_dropped = 0
        self.dropped_ids: deque[int] = deque(maxlen=64)  # the latest dropped exposure ids, for logs and tests
        self.max_depth = 0
        self.nbytes = 0
        self.peak_bytes = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def begin_warmup(self) -> None:
        with self._cond:
            self.warming_up = True

    def end_warmup(self) -> None:
        """The engine is ready. What waits is processed, not trimmed: the bound stays at the backlog's length
        until inference has brought the queue back to ``capacity_jobs``."""
        with self._cond:
            if self.warming_up:
                self.warming_up = False
                self._limit = max(self.capacity, len(self._items))

    def _full(self, extra_jobs: int = 0, extra_bytes: int = 0) -> bool:
        capacity = self.warmup_capacity if self.warming_up else self._limit
        over_bytes = self.max_bytes is not None and self.nbytes + extra_bytes > self.max_bytes
        return len(self._items) + extra_jobs > capacity or over_bytes

    def put(self, job) -> object | None:
        """Enqueue ``job``; returns the (first) job dropped to make room (or ``job`` itself under drop_newest),
        else None."""
        with self._cond:
            if self._closed:
                raise ConfigError("the job queue is closed")
            size = job_nbytes(job)
            dropped = []
            if self.when_full == "drop_newest":
                if self._full(1, size):
                    dropped.append(job)
                else:
                    self._items.append(job)
                    self.nbytes += size
            else:
                self._items.append(job)
                self.nbytes += size
                while self._items and self._full():
                    oldest = self._items.popleft()
                    self.nbytes -= job_nbytes(oldest)
                    dropped.append(oldest)
            for item in dropped:
                if self.warming_up:
                    self.warmup_dropped += 1
                else:
                    self.dropped += 1
                self.dropped_ids.append(int(item.exposure_id))
                logger.debug("job queue full: dropped exposure %d", item.exposure_id)
            self.max_depth = max(self.max_depth, len(self._items))
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
            self._cond.notify()
            return dropped[0] if dropped else None

    def _pop(self):
        job = self._items.popleft()
        self.nbytes -= job_nbytes(job)
        if len(self._items) <= self.capacity:
            self._limit = self.capacity  # the warm-up backlog is gone
        return job

    def get(self, timeout_s: float | None = None):
        """The oldest job; waits up to ``timeout_s`` (None: until one comes or the queue closes). None if none."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout_s):
                return None
            return self._pop() if self._items else None

    def get_nowait(self):
        with self._cond:
            return self._pop() if self._items else None

    def clear(self) -> list:
        """Remove and return every waiting job."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self.nbytes = 0
            self._limit = self.capacity
            return items

    def close(self) -> None:
        """No more puts; ``get`` returns what is left, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class InferenceThread:
    """Takes jobs from a JobQueue, runs them through ``process`` and hands ``(job, result)`` to ``deliver``
    (in this thread).

    A job that fails with a SpikeRevealError (e.g. a geometry the runner was not loaded for) is counted in
    ``failed`` and logged; the thread goes on, except after an EngineLoadError (kept in ``error``: it stops). ``busy`` is true while a job is being processed.
    """

    def __init__(self, queue: JobQueue, process: Callable[[ReadyJob], ExposureResult],
                 deliver: Callable[[ReadyJob, ExposureResult], None], name: str = "inference"):
        self.queue = queue
        self._process = process
        self._deliver = deliver
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._idle = threading.Condition()
        self.busy = False
        self.processed = 0
        self.failed = 0
        self.error: BaseException | None = None  # an unexpected exception that ended the thread

    def start(self) -> "InferenceThread":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                job = self.queue.get(timeout_s=0.1)
                if job is None:
                    if self.queue._closed and not len(self.queue):
                        return
                    continue
                with self._idle:
                    self.busy = True
                try:
                    result = self._process(job)
                except EngineLoadError as exc:  # final: serve stops with the reason, no retry per exposure
                    self.failed += 1
                    self.error = exc
                    logger.error("exposure %d failed: %s", job.exposure_id, exc)
                    return
                except SpikeRevealError as exc:
                    self.failed += 1
                    logger.error("exposure %d failed: %s", job.exposure_id, exc)
                else:
                    self._deliver(job, result)
                    self.processed += 1
                finally:
                    with self._idle:
                        self.busy = False
                        self._idle.notify_all()
        except BaseException as exc:  # surfaced by serve, which stops and reports it
            self.error = exc
            logger.exception("inference thread stopped")
        finally:
            with self._idle:
                self.busy = False
                self._idle.notify_all()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until the queue is empty and no job is in progress (True), or the timeout passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._idle:
            while self.alive and (self.busy or len(self.queue)):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(0.05 if remaining is None else min(remaining, 0.05))
        return not (self.busy or len(self.queue))

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the job in progress and stop (waiting jobs stay in the queue, for the caller to count)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
