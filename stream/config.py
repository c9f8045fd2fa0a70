"""Settings of the live pipeline: one frozen dataclass per stage, loaded from one JSON file (``--config``).

``rig.json`` (every section and key optional; unknown keys are an error, so typos do not pass silently)::

    {"format": "spikereveal-serve", "version": 1,
     "endpoints":  {"spike": "tcp://cam:5555", "rgb": "tcp://cam:5556", "output": "tcp://*:5557"},
     "geometry":   {"spike_height": 250, "spike_width": 400},
     "ingest":     {"receive_hwm_messages": 1000, "poll_interval_ms": 50, "spike_max_message_bytes": 2097152,
                    "rgb_max_message_bytes": 16777216, "spike_receive_buffer_bytes": 134217728,
                    "rgb_receive_buffer_bytes": 134217728},
     "sync":       {"k": 7, "margin_frames": 10, "rgb_to_spike_offset_ns": 0, "exposure_timeout_ns": 1000000000,
                    "max_pending_exposures": 16, "max_pending_bytes": 134217728, "max_ring_frames": 4096,
                    "max_ring_bytes": 268435456, ...},
     "engine":     {"engine": "ort", "precision": "fp32", "model": null, "onnx": null, "threads": null,
                    "triton_url": null, "triton_model": "spikereveal_ldn"},
     "worker":     {"queue_capacity_jobs": 2, "queue_max_bytes": 134217728, "warmup_queue_capacity_jobs": 16,
                    "when_full": "drop_oldest", "output_pixel_format": "bgr8",
                    "save_dir": null, "png_compression": 1, "write_video": false, "video_fps": 10.0,
                    "drain_timeout_s": 30.0},
     "scale_out":  {"workers": 0, "job_endpoint": null, "result_endpoint": null, "in_flight_per_worker_jobs": 1,
                    "reorder_wait_s": 2.0, "reorder_max_results": 8, "lost_job_policy": "requeue_once",
                    "requeue_max_age_s": 2.0, "result_timeout_s": 30.0, "heartbeat_timeout_s": 10.0,
                    "restart_workers": true, "worker_crash_loop_s": 10.0},
     "publish":    {"send_hwm_messages": 1000, "max_subscriptions": 64},
     "security":   {"secret_key_file": null, "allow_keys_dir": null, "output_curve": false,
                    "rig_key_file": null},
     "run":        {"exit_after_exposures": null, "idle_timeout_s": null, "stats_json": null, "trace": null},
     "calibration": "calibration.json"}

Memory. Every queue of camera data is bounded in bytes as well as in messages, with defaults sized for a
Jetson with 8 GB shared between CPU and GPU (Orin NX/Nano 8 GB), where the model, the runtime and the OS need
most of it: about 768 MiB of queued camera data in all -- the two SUB receive buffers 128 MiB each
(``ingest.*_receive_buffer_bytes``), the spike ring 256 MiB (``sync.max_ring_bytes``), the waiting
exposures' images 128 MiB (``sync.max_pending_bytes``) and the job queue 128 MiB (``worker.queue_max_bytes``),
plus at most ``in_flight_per_worker_jobs`` jobs per worker and ``reorder_max_results`` finished exposures
waiting to be published in order (K sharp frames each: 8 x 34 MB at ``rsb``, K = 7). ZeroMQ counts its receive buffer in messages, so
each SUB socket refuses messages above ``*_max_message_bytes`` (ZMQ_MAXMSGSIZE: the publisher is
disconnected, so set it to the rig's largest message) and gets a high-water mark of
``receive_buffer_bytes // max_message_bytes`` messages (at most ``receive_hwm_messages``). The defaults fit
a 64-frame block of a 1024x256 spike sensor and a 2560x2048 BGR exposure; a 4K RGB camera needs
``rgb_max_message_bytes`` of at least 25 MB.

Relative paths (``calibration``, ``model``, ``onnx``, ``save_dir``, ``stats_json``, ``trace``, the key files and
folder of ``security``) are relative to the config file. The calibration is a ``spikereveal calibrate`` file (its clock mapping moves exposures onto
the spike clock; its geometry and photometric maps are applied to every window). Command-line options
override the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from spikereveal.engines.runners import RunnerOptions
from spikereveal.errors import ConfigError, FormatError
from spikereveal.stream.sync import SyncConfig

__all__ = [
    "CONFIG_FORMAT",
    "IngestConfig",
    "EngineConfig",
    "WorkerConfig",
    "ScaleOutConfig",
    "PublishConfig",
    "SecurityConfig",
    "ServeConfig",
    "load_serve_config",
    "WHEN_FULL_POLICIES",
    "LOST_JOB_POLICIES",
]

CONFIG_FORMAT = "spikereveal-serve"
CONFIG_VERSION = 1
WHEN_FULL_POLICIES = ("drop_oldest", "drop_newest")
LOST_JOB_POLICIES = ("requeue_once", "drop")
OUTPUT_PIXEL_FORMATS = ("bgr8", "bgr_f32")


def _positive_int(owner: str, name: str, value, low: int = 1, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{owner}.{name} must be an integer >= {low}, got {value!r}")


def _positive_seconds(owner: str, name: str, value, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{owner}.{name} must be a finite number of seconds > 0, got {value!r}")


@dataclass(frozen=True)
class IngestConfig:
    """The two SUB sockets and the receive loop."""

    receive_hwm_messages: int = 1000  # per SUB socket, at most; beyond it ZeroMQ drops (the synchroniser sees gaps)
    poll_interval_ms: int = 50  # longest poller wait before timeouts (sync, idle, exit) are checked
    spike_max_message_bytes: int = 2 * 1024 * 1024  # larger messages are refused (ZMQ_MAXMSGSIZE)
    rgb_max_message_bytes: int = 16 * 1024 * 1024
    spike_receive_buffer_bytes: int = 128 * 1024 * 1024  # the SUB buffer's byte bound (sizes its HWM)
    rgb_receive_buffer_bytes: int = 128 * 1024 * 1024

    def __post_init__(self):
        _positive_int("ingest", "receive_hwm_messages", self.receive_hwm_messages)
        _positive_int("ingest", "poll_interval_ms", self.poll_interval_ms)
        for stream in ("spike", "rgb"):
            largest, budget = f"{stream}_max_message_bytes", f"{stream}_receive_buffer_bytes"
            _positive_int("ingest", largest, getattr(self, largest), low=1024)
            _positive_int("ingest", budget, getattr(self, budget), low=getattr(self, largest))

    def receive_hwm(self, stream: str) -> int:
        """The SUB high-water mark (messages) of ``stream`` ("spike" or "rgb") that keeps its byte bound."""
        budget = getattr(self, f"{stream}_receive_buffer_bytes") // getattr(self, f"{stream}_max_message_bytes")
        return max(1, min(self.receive_hwm_messages, budget))


@dataclass(frozen=True)
class EngineConfig:
    """Which runner does inference: ``ort``/``trt`` from ``onnx`` (or an export of ``model``), ``torch`` from
    ``model``; ``model`` None means the shipped default checkpoint. ``triton``: the model ``triton_model`` of
    the Triton server at ``triton_url`` (gRPC ``HOST:PORT``), see ``spikereveal.engines.triton``."""

    engine: str = "ort"
    precision: str = "fp32"
    model: str | None = None
    onnx: str | None = None
    threads: int | None = None  # inference threads; None: all cores but one
    triton_url: str | None = None
    triton_model: str = "spikereveal_ldn"

    def __post_init__(self):
        from spikereveal.engines.runners import RUNNERS

        if self.engine not in RUNNERS:
            raise ConfigError(f"engine.engine must be one of {sorted(RUNNERS)}, got {self.engine!r}")
        _positive_int("engine", "threads", self.threads, allow_none=True)
        self.choice()  # validates precision and engine/onnx combinations

    def choice(self):
        """The engines module's EngineChoice for this config."""
        from spikereveal.engines.choice import EngineChoice

        from spikereveal.engines.runners import TritonOptions

        triton = None
        if self.engine == "triton" or self.triton_url is not None:
            triton = TritonOptions(url=self.triton_url or "", model=self.triton_model)
        return EngineChoice(engine=self.engine, precision=self.precision, model=self.model, onnx_path=self.onnx,
                            options=RunnerOptions(threads=self.threads, triton=triton))


@dataclass(frozen=True)
class WorkerConfig:
    """The bounded job queue between the synchroniser and inference, and what is done with the results.

    Full queue (inference slower than the exposure rate): ``drop_oldest`` (default; the newest exposure
    is the most useful live) or ``drop_newest``; either way the dropped exposure is counted in
    ``exposures_dropped`` and memory stays at ``queue_capacity_jobs`` windows (+ one in inference).
    """

    queue_capacity_jobs: int = 2
    queue_max_bytes: int = 128 * 1024 * 1024  # spike windows + images waiting; beyond it when_full applies
    warmup_queue_capacity_jobs: int = 16  # while the engine loads, exposures wait (bounded) instead of dropping
    when_full: str = "drop_oldest"
    output_pixel_format: str = "bgr8"  # sharp frames on the wire: bgr8 (viewers) or bgr_f32 (float layout)
    save_dir: str | None = None  # also write frames/ and frames.csv like `deblur`
    png_compression: int = 1
    write_video: bool = False  # with save_dir: a side-by-side (blurry | sharp) MP4
    video_fps: float = 10.0
    drain_timeout_s: float = 30.0  # at shutdown, finish queued exposures for at most this long

    def __post_init__(self):
        _positive_int("worker", "queue_capacity_jobs", self.queue_capacity_jobs)
        _positive_int("worker", "queue_max_bytes", self.queue_max_bytes)
        _positive_int("worker", "warmup_queue_capacity_jobs", self.warmup_queue_capacity_jobs)
        if self.when_full not in WHEN_FULL_POLICIES:
            raise ConfigError(f"worker.when_full must be one of {WHEN_FULL_POLICIES}, got {self.when_full!r}")
        if self.output_pixel_format not in OUTPUT_PIXEL_FORMATS:
            raise ConfigError(f"worker.output_pixel_format must be one of {OUTPUT_PIXEL_FORMATS}, "
                              f"got {self.output_pixel_format!r}")
        if isinstance(self.png_compression, bool) or not isinstance(self.png_compression, int) or not (
                0 <= self.png_compression <= 9):
            raise ConfigError(f"worker.png_compression must be 0..9, got {self.png_compression!r}")
        _positive_seconds("worker", "video_fps", self.video_fps)
        _positive_seconds("worker", "drain_timeout_s", self.drain_timeout_s, allow_zero=True)
        if self.write_video and self.save_dir is None:
            raise ConfigError("worker.write_video needs worker.save_dir (--save DIR)")


@dataclass(frozen=True)
class ScaleOutConfig:
    """Inference outside the serve process. ``workers`` 0: one inference thread in ``serve``; N > 0: N local
    worker processes. ``job_endpoint``/``result_endpoint``: also bind the job ROUTER and the result PULL there
    for remote ``spikereveal worker`` s.

    Dispatch is credit-based (``stream.dispatch``): each worker announces its credits (``spikereveal worker
    --credits``, default 1; local workers get ``in_flight_per_worker_jobs``) and serve sends a job only to a
    worker holding fewer than ``min(its credits, in_flight_per_worker_jobs)``; a result hands the credit back.
    The rest wait in the bounded job queue. Results are published in exposure order, with a bounded wait: once
    the oldest finished result has waited ``reorder_wait_s`` for an earlier exposure, or more than
    ``reorder_max_results`` wait, the unfinished exposures before them are skipped (``reorder_skipped``; their
    late results are discarded). A job not back ``result_timeout_s`` after it was sent is counted lost.

    Workers acknowledge each job they take and beat every second (``worker.HEARTBEAT_INTERVAL_S``): a local
    worker whose process exits is lost at once, a worker silent for ``heartbeat_timeout_s`` is lost. Its
    unfinished jobs then follow ``lost_job_policy``: ``requeue_once`` (default) sends each again, before any
    new job and in its place in the publishing order, if it was first sent less than ``requeue_max_age_s``
    ago and was not re-queued before (``jobs_requeued``), else drops it (``worker_lost``); ``drop`` drops them
    all. What waited behind a dropped job goes out at once. With
    ``restart_workers`` a local worker whose process exits is replaced by a new one (a new worker id;
    ``workers_restarted``), unless it exited with code 2 (it reported a failure it would repeat, such as an
    engine that cannot load) or within ``worker_crash_loop_s`` of its start (a crash loop); then serve goes
    on with the others, and with none left and no remote endpoint it stops with an error."""

    workers: int = 0
    job_endpoint: str | None = None
    result_endpoint: str | None = None
    in_flight_per_worker_jobs: int = 1  # the most jobs one worker holds at once (the cap on its credits)
    reorder_wait_s: float = 2.0  # the longest a finished result waits for an earlier exposure before skip-ahead
    reorder_max_results: int = 8  # the most finished results waiting for an earlier exposure
    lost_job_policy: str = "requeue_once"  # or "drop": what happens to a lost worker's unfinished jobs
    requeue_max_age_s: float = 2.0  # requeue_once: only jobs first sent less than this long ago
    result_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 10.0  # > a few heartbeat intervals (1 s), or a busy network looks like a death
    remote_workers: int = 0  # no longer used (workers announce their credits); accepted so old configs load
    restart_workers: bool = True
    worker_crash_loop_s: float = 10.0  # a local worker that exits sooner after its start is not restarted

    def __post_init__(self):
        _positive_int("scale_out", "workers", self.workers, low=0)
        _positive_seconds("scale_out", "worker_crash_loop_s", self.worker_crash_loop_s)
        if not isinstance(self.restart_workers, bool):
            raise ConfigError(f"scale_out.restart_workers must be true or false, got {self.restart_workers!r}")
        _positive_int("scale_out", "remote_workers", self.remote_workers, low=0)
        _positive_int("scale_out", "in_flight_per_worker_jobs", self.in_flight_per_worker_jobs)
        if self.in_flight_per_worker_jobs > 0xFFFF:
            raise ConfigError(f"scale_out.in_flight_per_worker_jobs must be at most 65535, got "
                              f"{self.in_flight_per_worker_jobs}")
        _positive_seconds("scale_out", "reorder_wait_s", self.reorder_wait_s)
        _positive_int("scale_out", "reorder_max_results", self.reorder_max_results)
        _positive_seconds("scale_out", "requeue_max_age_s", self.requeue_max_age_s)
        if self.lost_job_policy not in LOST_JOB_POLICIES:
            raise ConfigError(f"scale_out.lost_job_policy must be one of {', '.join(LOST_JOB_POLICIES)}, got "
                              f"{self.lost_job_policy!r}")
        _positive_seconds("scale_out", "result_timeout_s", self.result_timeout_s)
        _positive_seconds("scale_out", "heartbeat_timeout_s", self.heartbeat_timeout_s)
        if (self.job_endpoint is None) != (self.result_endpoint is None):
            raise ConfigError("scale_out.job_endpoint and scale_out.result_endpoint go together (remote workers "
                              "pull jobs from one and push results to the other)")

    @property
    def distributed(self) -> bool:
        return self.workers > 0 or self.job_endpoint is not None


@dataclass(frozen=True)
class PublishConfig:
    send_hwm_messages: int = 1000  # PUB queue per subscriber; a slow viewer loses frames, never stalls serve
    # distinct subscription topics the output socket may hold; beyond it the socket is re-bound (see
    # transport.GuardedPublisher): what subscribers can make serve keep is bounded
    max_subscriptions: int = 64

    def __post_init__(self):
        _positive_int("publish", "send_hwm_messages", self.send_hwm_messages)
        _positive_int("publish", "max_subscriptions", self.max_subscriptions)


@dataclass(frozen=True)
class SecurityConfig:
    """CURVE keys (``spikereveal keys generate``; see :mod:`spikereveal.stream.security`).

    ``secret_key_file`` (serve's ``.key_secret``) with ``allow_keys_dir`` (a folder of the clients' public
    ``*.key`` files): the job and result ports are CURVE servers admitting only those clients; required when
    they bind a non-loopback address. ``output_curve``: the output port too (viewers need keys).
    ``rig_key_file``: the rig publishers' public key; serve then subscribes to them as a CURVE client with
    its own key pair (the rig must list serve's public key)."""

    secret_key_file: str | None = None
    allow_keys_dir: str | None = None
    output_curve: bool = False
    rig_key_file: str | None = None

    def __post_init__(self):
        if (self.secret_key_file is None) != (self.allow_keys_dir is None):
            raise ConfigError("security.secret_key_file (--secret-key) and security.allow_keys_dir (--allow-keys) "
                              "go together: serve's own key pair and the folder of the public keys it admits")
        if self.secret_key_file is None and (self.output_curve or self.rig_key_file is not None):
            raise ConfigError("security.output_curve (--curve-output) and security.rig_key_file (--rig-key) need "
                              "serve's own key pair: give --secret-key and --allow-keys too")
        if not isinstance(self.output_curve, bool):
            raise ConfigError(f"security.output_curve must be true or false, got {self.output_curve!r}")

    @property
    def server(self):
        """The ServerKeys of serve's bound CURVE ports (None: no keys)."""
        if self.secret_key_file is None:
            return None
        from spikereveal.stream.security import ServerKeys

        return ServerKeys(self.secret_key_file, self.allow_keys_dir)

    @property
    def rig(self):
        """The ClientKeys of serve's rig subscriptions (None: plain)."""
        if self.rig_key_file is None:
            return None
        from spikereveal.stream.security import ClientKeys

        return ClientKeys(self.secret_key_file, self.rig_key_file)


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``spikereveal serve`` needs (see the module doc for the JSON form)."""

    spike_endpoint: str
    rgb_endpoint: str
    output_endpoint: str
    spike_height: int | None = None  # known sensor geometry: the engine loads before streaming starts
    spike_width: int | None = None
    ingest: IngestConfig = field(default_factory=IngestConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    scale_out: ScaleOutConfig = field(default_factory=ScaleOutConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    exit_after_exposures: int | None = None  # stop once this many exposures are published
    idle_timeout_s: float | None = None  # stop when no camera message arrived for this long
    stats_json: str | None = None
    trace: str | None = None  # per-exposure stage stamps (stream.trace .npz) for 'spikereveal bench report'
    calibration: str | None = None  # a `spikereveal calibrate` file

    def __post_init__(self):
        for name in ("spike_endpoint", "rgb_endpoint", "output_endpoint"):
            value = getattr(self, name)
            if not isinstance(value, str) or "://" not in value:
                raise ConfigError(f"{name} must be a ZeroMQ endpoint such as tcp://host:port or ipc:///path, "
                                  f"got {value!r}")
        if (self.spike_height is None) != (self.spike_width is None):
            raise ConfigError("give both spike_height and spike_width, or neither")
        _positive_int("geometry", "spike_height", self.spike_height, allow_none=True)
        _positive_int("geometry", "spike_width", self.spike_width, allow_none=True)
        _positive_int("run", "exit_after_exposures", self.exit_after_exposures, allow_none=True)
        _positive_seconds("run", "idle_timeout_s", self.idle_timeout_s, allow_none=True)
        from spikereveal.stream.security import require_keys

        scale = self.scale_out
        if scale.job_endpoint is not None:
            for what, endpoint in (("the job endpoint", scale.job_endpoint),
                                   ("the result endpoint", scale.result_endpoint)):
                require_keys(endpoint, what, self.security.server)

    @property
    def spike_shape(self) -> tuple[int, int] | None:
        return None if self.spike_height is None else (self.spike_height, self.spike_width)

    @property
    def queued_bytes_bound(self) -> int:
        """The most camera data serve's queues may hold at once, in bytes (768 MiB by default): both SUB
        receive buffers, the spike ring, the waiting exposures' images and the job queue. Not in it: the
        jobs out at workers (``in_flight_per_worker_jobs`` each), the results waiting to be published in order
        (``scale_out.reorder_max_results``) and the output's PUB buffers
        (``publish.send_hwm_messages`` sharp frames per slow viewer)."""
        ingest = self.ingest
        return (ingest.spike_receive_buffer_bytes + ingest.rgb_receive_buffer_bytes + self.sync.max_ring_bytes
                + self.sync.max_pending_bytes + self.worker.queue_max_bytes)


_SECTIONS = {"ingest": IngestConfig, "sync": SyncConfig, "engine": EngineConfig, "worker": WorkerConfig,
             "scale_out": ScaleOutConfig, "publish": PublishConfig, "security": SecurityConfig}
_PATH_KEYS = {("engine", "model"), ("engine", "onnx"), ("worker", "save_dir"), ("security", "secret_key_file"),
              ("security", "allow_keys_dir"), ("security", "rig_key_file")}


def _section(path: Path, name: str, cls, values: Any, base: Path):
    if not isinstance(values, dict):
        raise FormatError(path, f"section {name!r} must be a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FormatError(path, f"unknown key(s) {unknown} in section {name!r}; known: {sorted(known)}")
    values = dict(values)
    for section, key in _PATH_KEYS:
        if section == name and values.get(key) is not None:
            values[key] = str(base / values[key])
    try:
        return cls(**values)
    except (ConfigError, TypeError) as exc:
        raise FormatError(path, f"section {name!r}: {exc}") from None


def load_serve_config(path: str | os.PathLike | None = None, **overrides) -> ServeConfig:
    """A ServeConfig from ``path`` (``rig.json``; None: defaults) with ``overrides`` on top.

    ``overrides``: ServeConfig fields (``spike_endpoint=...``) or per-section dicts (``worker={"save_dir":
    ...}``) whose keys replace the file's; a value of None in an override means "not given".
    """
    data: dict = {}
    base = Path(".")
    if path is not None:
        path = Path(path)
        base = path.resolve().parent
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except json.JSONDecodeError as exc:
            raise FormatError(path, f"is not valid JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
        if not isinstance(data, dict):
            raise FormatError(path, "must hold a JSON object")
        if data.get("format", CONFIG_FORMAT) != CONFIG_FORMAT:
            raise FormatError(path, f"'format' is {data.get('format')!r}, expected {CONFIG_FORMAT!r}")
        if data.get("version", CONFIG_VERSION) != CONFIG_VERSION:
            raise FormatError(path, f"config version {data.get('version')!r} is not supported ({CONFIG_VERSION})")
        known = {"format", "version", "endpoints", "geometry", "run", "calibration", *_SECTIONS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FormatError(path, f"unknown section(s) {unknown}; known: {sorted(known)}")

    kwargs: dict = {}
    endpoints = data.get("endpoints", {}) or {}
    for key in ("spike", "rgb", "output"):
        if key in endpoints:
            kwargs[f"{key}_endpoint"] = endpoints[key]
    for key, value in (data.get("geometry", {}) or {}).items():
        if key not in ("spike_height", "spike_width"):
            raise FormatError(path, f"unknown key {key!r} in section 'geometry'")
        kwargs[key] = value
    for key, value in (data.get("run", {}) or {}).items():
        if key not in ("exit_after_exposures", "idle_timeout_s", "stats_json", "trace"):
            raise FormatError(path, f"unknown key {key!r} in section 'run'")
        kwargs[key] = str(base / value) if key in ("stats_json", "trace") and value is not None else value
    if data.get("calibration") is not None:
        if not isinstance(data["calibration"], str):
            raise FormatError(path, "'calibration' must be the path of a calibration.json file")
        kwargs["calibration"] = str(base / data["calibration"])
    for name, cls in _SECTIONS.items():
        values = dict(data.get(name, {}) or {})
        if name in overrides:
            values.update({k: v for k, v in (overrides.pop(name) or {}).items() if v is not None})
        kwargs[name] = _section(path, name, cls, values, base) if path is not None else _build(name, cls, values)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    missing = [n for n in ("spike_endpoint", "rgb_endpoint", "output_endpoint") if n not in kwargs]
    if missing:
        raise ConfigError(f"no {', '.join(missing)}: give --spike-endpoint/--rgb-endpoint/--output-endpoint or "
                          "an 'endpoints' section in --config")
    return ServeConfig(**kwargs)


def _build(name: str, cls, values: dict):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {name} setting(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def with_section(config: ServeConfig, name: str, **changes) -> ServeConfig:
    """``config`` with some fields of one section changed (validated again)."""
    return replace(config, **{name: replace(getattr(config, name), **changes)})
