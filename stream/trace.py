"""Per-exposure latency traces: a recorder for the live pipeline and the trace file format.

Every exposure gets one row of int64 monotonic-ns timestamps, one column per stage of :data:`STAGES`
(in pipeline order), plus its exposure id, its exposure end time on the rig (RGB) clock and how many
sharp frames it published. A stamp never taken holds :data:`MISSING` (the exposure was skipped or
dropped before that stage).

Recorder use (the pipeline; ``serve --trace PATH``)::

    recorder = create_recorder(trace_path is not None, k=DEFAULT_K, rig_to_host_offset_ns=offset_or_none)
    slot = recorder.begin(job.exposure_id, job.start_ns + job.duration_ns)  # one thread (the job creator)
    recorder.mark(slot, EXPOSURE_RECEIVED, job.received_ns)       # any thread; t_ns from the caller's clock
    ...
    recorder.set_outputs(slot, k)
    recorder.save(path, counters=sync.counters.as_dict(), environment=collect_environment(...))

``mark`` is one numpy item store: no allocation, no clock read (the caller passes ``t_ns``, often a time
it already has such as ``ReadyJob.received_ns``). :class:`NullTraceRecorder` has the same methods doing
nothing (``enabled`` is False, so a caller may also skip computing stamps). The recorder is a ring: past
``capacity`` exposures the oldest rows are overwritten and counted (``records_overwritten``).

File format: ``.npz`` (numpy, no pickle) with int64 arrays ``stamps_ns`` (n, n_stages),
``exposure_id`` (n,), ``exposure_end_ns`` (n,), ``outputs`` (n,) and ``metadata``: a 0-d unicode array
holding JSON with ``trace_format`` (:data:`TRACE_FORMAT`), ``stages`` (column names), ``environment``,
``counters`` (the pipeline's drop/gap counters), ``rig_to_host_offset_ns`` (add to a rig-clock time to
get host monotonic time; null when unknown; 0 for loopback replay on the same host clock),
``records_overwritten`` and ``k``. Chosen over JSON lines for exact int64 ns, size and load speed.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spikereveal.errors import ConfigError, FormatError

TRACE_FORMAT = "spikereveal-trace/1"
STAGES: tuple[str, ...] = (
    "last_spike_received",  # the block holding the last spike frame of the exposure's window arrived
    "exposure_received",  # the RGB exposure message arrived
    "window_complete",  # the synchroniser saw both: the exposure can be processed
    "window_cut",  # the spike window was cut out of the ring (job created)
    "inference_start",  # pre-processing done, the engine is called
    "inference_end",
    "first_output_published",
    "last_output_published",
)
STAGE_INDEX = {name: index for index, name in enumerate(STAGES)}
(LAST_SPIKE_RECEIVED, EXPOSURE_RECEIVED, WINDOW_COMPLETE, WINDOW_CUT, INFERENCE_START, INFERENCE_END,
 FIRST_OUTPUT_PUBLISHED, LAST_OUTPUT_PUBLISHED) = range(len(STAGES))
MISSING = np.iinfo(np.int64).min  # a stage that never happened for this exposure
DEFAULT_CAPACITY = 100_000  # exposures (6.4 MB of stamps); about an hour at 25 exposures/s


@dataclass(eq=False)
class Trace:
    """A recorded run: rows in recording order (oldest first)."""

    stamps_ns: np.ndarray  # int64 (n, len(STAGES)); MISSING where a stage did not happen
    exposure_id: np.ndarray  # int64 (n,)
    exposure_end_ns: np.ndarray  # int64 (n,), rig clock; MISSING when unknown
    outputs: np.ndarray  # int64 (n,), sharp frames published
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.stamps_ns = np.asarray(self.stamps_ns, dtype=np.int64)
        n = self.stamps_ns.shape[0] if self.stamps_ns.ndim == 2 else -1
        if self.stamps_ns.ndim != 2 or self.stamps_ns.shape[1] != len(STAGES):
            raise ConfigError(f"stamps_ns must be int64 (n, {len(STAGES)}), got shape {self.stamps_ns.shape}")
        for name in ("exposure_id", "exposure_end_ns", "outputs"):
            value = np.asarray(getattr(self, name), dtype=np.int64)
            if value.shape != (n,):
                raise ConfigError(f"{name} must have shape ({n},), got {value.shape}")
            setattr(self, name, value)
        self.metadata = dict(self.metadata)
        self.metadata.setdefault("trace_format", TRACE_FORMAT)
        self.metadata.setdefault("stages", list(STAGES))

    def __len__(self) -> int:
        return int(self.stamps_ns.shape[0])

    def stage(self, name: str) -> np.ndarray:
        """The column of one stage (int64 ns, MISSING where absent)."""
        if name not in STAGE_INDEX:
            raise ConfigError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
        return self.stamps_ns[:, STAGE_INDEX[name]]

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = json.dumps(self.metadata, sort_keys=True, default=_json_default)
        with open(path, "wb") as handle:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(handle, stamps_ns=self.stamps_ns, exposure_id=self.exposure_id,
                                exposure_end_ns=self.exposure_end_ns, outputs=self.outputs,
                                metadata=np.array(metadata))
        return path


def _json_default(value):
    """numpy scalars (counters often are) as plain numbers; anything else as its text."""
    return value.item() if isinstance(value, np.generic) else str(value)


def load_trace(path) -> Trace:
    """Read a trace file written by :meth:`Trace.save`; columns are matched by stage name."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FormatError(path, "no such trace file (write one with `spikereveal serve --trace PATH`)") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:  # a damaged .npz is a BadZipFile
        raise FormatError(path, f"not a spikereveal trace (.npz) file: {exc}") from None
    with archive:
        missing = {"stamps_ns", "exposure_id", "exposure_end_ns", "outputs", "metadata"} - set(archive.files)
        if missing:
            raise FormatError(path, f"not a spikereveal trace: missing arrays {sorted(missing)}")
        try:
            metadata = json.loads(str(archive["metadata"][()]))
        except (ValueError, TypeError) as exc:
            raise FormatError(path, f"trace metadata is not valid JSON: {exc}") from None
        if not isinstance(metadata, dict) or not str(metadata.get("trace_format", "")).startswith("spikereveal-trace/"):
            raise FormatError(path, f"not a spikereveal trace: trace_format is {metadata.get('trace_format')!r}"
                              if isinstance(metadata, dict) else "trace metadata must be a JSON object")
        if metadata["trace_format"] != TRACE_FORMAT:
            raise FormatError(path, f"trace format {metadata['trace_format']!r} is not supported (this version "
                                    f"reads {TRACE_FORMAT!r}); rebuild the trace with this spikereveal version")
        names = list(metadata.get("stages", []))
        stored = np.asarray(archive["stamps_ns"])
        if stored.ndim != 2 or stored.shape[1] != len(names):
            raise FormatError(path, f"stamps_ns has shape {stored.shape} for {len(names)} stage names")
        unknown = [name for name in names if name not in STAGE_INDEX]
        if unknown:
            raise FormatError(path, f"unknown stages {unknown}; expected names from {list(STAGES)}")
        stamps = np.full((stored.shape[0], len(STAGES)), MISSING, dtype=np.int64)
        for column, name in enumerate(names):
            stamps[:, STAGE_INDEX[name]] = stored[:, column]
        try:
            return Trace(stamps, archive["exposure_id"], archive["exposure_end_ns"], archive["outputs"],
                         {**metadata, "stages": list(STAGES)})
        except ConfigError as exc:
            raise FormatError(path, str(exc)) from None


class NullTraceRecorder:
    """Tracing off: every method does nothing and allocates nothing."""

    enabled = False

    def begin(self, exposure_id: int, exposure_end_ns: int = MISSING) -> int:
        return 0

    def mark(self, slot: int, stage: int, t_ns: int) -> None:
        pass

    def set_outputs(self, slot: int, outputs: int) -> None:
        pass

    def __len__(self) -> int:
        return 0


NULL_RECORDER = NullTraceRecorder()


class TraceRecorder:
    """Tracing on: preallocated int64 rows, a ring of ``capacity`` exposures.

    ``begin`` must be called from one thread (it advances the ring); ``mark``/``set_outputs`` may be
    called from any thread for a slot it was given (distinct cells; numpy item stores hold the GIL).
    ``stage`` is a column index: use the module constants (``INFERENCE_START``...) or ``STAGE_INDEX``.
    """

    enabled = True

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, k: int | None = None,
                 rig_to_host_offset_ns: int | None = None):
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)) or capacity < 1:
            raise ConfigError(f"trace capacity must be a whole number >= 1 (exposures), got {capacity!r}")
        self.capacity = int(capacity)
        self.k = k
        self.rig_to_host_offset_ns = rig_to_host_offset_ns
        self._stamps = np.full((self.capacity, len(STAGES)), MISSING, dtype=np.int64)
        self._exposure_id = np.zeros(self.capacity, dtype=np.int64)
        self._exposure_end = np.full(self.capacity, MISSING, dtype=np.int64)
        self._outputs = np.zeros(self.capacity, dtype=np.int64)
        self._begun = 0

    def begin(self, exposure_id: int, exposure_end_ns: int = MISSING) -> int:
        """Start the row of one exposure; returns its slot (reused after ``capacity`` more exposures)."""
        slot = self._begun % self.capacity
        self._begun += 1
        self._stamps[slot] = MISSING
        self._exposure_id[slot] = exposure_id
        self._exposure_end[slot] = exposure_end_ns
        self._outputs[slot] = 0
        return slot

    def mark(self, slot: int, stage: int, t_ns: int) -> None:
        """Record that ``stage`` happened at ``t_ns`` (monotonic ns) for the exposure in ``slot``."""
        self._stamps[slot, stage] = t_ns

    def set_outputs(self, slot: int, outputs: int) -> None:
        self._outputs[slot] = outputs

    def __len__(self) -> int:
        return min(self._begun, self.capacity)

    @property
    def records_overwritten(self) -> int:
        return max(0, self._begun - self.capacity)

    def trace(self, *, counters: dict | None = None, environment: dict | None = None,
              extra: dict | None = None) -> Trace:
        """A copy of the rows so far, oldest first, with the run's metadata."""
        n = len(self)
        order = (np.arange(n) + self._begun) % self.capacity if self._begun > self.capacity else np.arange(n)
        metadata = {
            "trace_format": TRACE_FORMAT,
            "stages": list(STAGES),
            "k": self.k,
            "rig_to_host_offset_ns": self.rig_to_host_offset_ns,
            "records_overwritten": self.records_overwritten,
            "counters": dict(counters or {}),
            "environment": dict(environment or {}),
            **(extra or {}),
        }
        return Trace(self._stamps[order].copy(), self._exposure_id[order].copy(),
                     self._exposure_end[order].copy(), self._outputs[order].copy(), metadata)

    def save(self, path, **metadata) -> Path:
        """Write the trace file (see the module docstring); keyword arguments as for :meth:`trace`."""
        return self.trace(**metadata).save(path)


def create_recorder(enabled: bool, capacity: int = DEFAULT_CAPACITY, *, k: int | None = None,
                    rig_to_host_offset_ns: int | None = None) -> TraceRecorder | NullTraceRecorder:
    """A :class:`TraceRecorder` when tracing is on, else the shared :data:`NULL_RECORDER`."""
    if not enabled:
        return NULL_RECORDER
    return TraceRecorder(capacity, k=k, rig_to_host_offset_ns=rig_to_host_offset_ns)


def measure_mark_overhead(marks: int = 200_000, repeats: int = 5) -> dict:
    """Micro-benchmark: ns per ``mark`` call with tracing off and on, and per exposure (begin + all marks).

    Each figure is the best of ``repeats`` loops of ``marks`` calls minus an empty loop of the same length
    (the loop itself is not the recorder's cost). ``per_exposure_on_us`` is what one traced exposure costs.
    """
    if marks < 1 or repeats < 1:
        raise ConfigError(f"marks and repeats must be >= 1, got {marks} and {repeats}")
    recorder, null = TraceRecorder(capacity=1024), NullTraceRecorder()
    stages = len(STAGES)

    def best_ns(body) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter_ns()
            body()
            times.append(time.perf_counter_ns() - started)
        return min(times) / marks

    def empty():
        for i in range(marks):
            pass

    def mark_with(target):
        mark = target.mark

        def body():
            for i in range(marks):
                mark(3, 5, i)
        return body

    def exposures_with(target):
        begin, mark, set_outputs = target.begin, target.mark, target.set_outputs
        count = max(1, marks // stages)

        def body():
            for i in range(count):
                slot = begin(i, i)
                for stage in range(stages):
                    mark(slot, stage, i)
                set_outputs(slot, 7)
        return body, count

    baseline = best_ns(empty)
    off = max(0.0, best_ns(mark_with(null)) - baseline)
    on = max(0.0, best_ns(mark_with(recorder)) - baseline)
    body_on, count = exposures_with(recorder)
    body_off, _ = exposures_with(null)
    per_exposure_on = best_ns(body_on) * marks / count
    per_exposure_off = best_ns(body_off) * marks / count
    return {
        "mark_off_ns": off,
        "mark_on_ns": on,
        "per_exposure_off_us": per_exposure_off / 1e3,
        "per_exposure_on_us": per_exposure_on / 1e3,
        "stages": stages,
        "marks": marks,
        "repeats": repeats,
    }


def tracing_cost_fraction(per_exposure_on_us: float, per_exposure_off_us: float, exposure_period_ms: float) -> float:
    """Throughput lost to tracing when the pipeline spends ``exposure_period_ms`` per exposure (<= 2 % target)."""
    if exposure_period_ms <= 0:
        raise ConfigError(f"exposure_period_ms must be > 0, got {exposure_period_ms}")
    return max(0.0, per_exposure_on_us - per_exposure_off_us) / (exposure_period_ms * 1e3)
