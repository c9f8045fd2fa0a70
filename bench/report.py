"""Latency report of a traced run: per-stage and end-to-end statistics, throughput, drops, environment.

A stage of the report is the duration between two trace stamps (:data:`SPANS`), computed per exposure
wherever both stamps exist; exposures never published simply contribute to fewer stages and are counted
in ``drops``. Warm-up: the first ``warmup`` exposures of the run (trace order) are excluded from every
figure (less the rows the recorder's ring already overwrote, which were the oldest).

End to end runs from the exposure's end to its first / last sharp frame published. The exposure end is
on the rig clock; it is put on the host clock with the trace's ``rig_to_host_offset_ns`` (0 for a
loopback replay on the same clock). When that offset is unknown (a live rig without clock calibration)
the origin is the arrival of the exposure message instead, and ``end_to_end.origin`` says so.
``e2e_less_inference`` = (end-to-end to the last output) - inference, per exposure: everything between the
exposure and its last frame that is not the network, waits included (transport, the wait for spikes, queue,
window cut, pre-processing, publish). Not SPEC §8's non-inference target, which counts serve's work only
(``non_inference_work_ms`` in serve's latency split: ingest + prepare + postprocess + publish).

Report JSON (``schema_version`` :data:`SCHEMA_VERSION`)::

    {"schema_version": 2, "percentile_method": "nearest-rank", "warmup_exposures": N, "exposures": {...},
     "stages": {"sync_wait": {"from", "to", "count", "min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms",
                               "p95_ms", "p99_ms", "p99_9_ms", "max_ms", "cv", "cv_warning"}, ...},
     "end_to_end": {<the same fields, to the LAST output>, "origin", "to", "first_output": {<fields>}},
     "e2e_less_inference_p99_ms": float | null, "e2e_less_inference": {<fields>},
     "throughput": {"exposures_per_s", "output_frames_per_s", "k", "exposure_rate_hz", "real_time_factor", ...},
     "drops": {<pipeline counters>, "traced_not_published": n}, "environment": {...},
     "power": {"mean_total_w", "energy_per_frame_mj", ...} | null}   # Jetson, from tegrastats

Statistics follow :mod:`spikereveal.stream.stats` (nearest-rank percentiles; null when a stage has no sample).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from spikereveal.stream.stats import PERCENTILE_METHOD, STAT_FIELDS, latency_stats, rate_hz, throughput
from spikereveal.stream.trace import MISSING, STAGE_INDEX, Trace
from spikereveal.errors import ConfigError, FormatError

SCHEMA_VERSION = 2  # 2: non_inference renamed e2e_less_inference (it includes the waits)
# (report stage, from stamp, to stamp), in pipeline order
SPANS: tuple[tuple[str, str, str], ...] = (
    ("sync_wait", "exposure_received", "window_complete"),  # the exposure waited for the rest of its spikes
    ("exposure_wait", "last_spike_received", "window_complete"),  # the spikes waited for their exposure
    ("window_cut", "window_complete", "window_cut"),
    ("preprocess", "window_cut", "inference_start"),  # queue + LDN input extraction
    ("inference", "inference_start", "inference_end"),
    ("first_publish", "inference_end", "first_output_published"),
    ("publish", "first_output_published", "last_output_published"),  # the remaining K - 1 frames
)
EXPOSURE_DELIVERY = "exposure_delivery"  # exposure end -> message received; only with a known clock offset
REQUIRED_KEYS = ("schema_version", "stages", "end_to_end", "e2e_less_inference_p99_ms", "throughput", "drops",
                 "environment")
ORIGIN_EXPOSURE_END = "exposure_end"
ORIGIN_EXPOSURE_RECEIVED = "exposure_received"


def effective_warmup(trace: Trace, warmup: int) -> int:
    """Exposures to skip at the start of the trace: ``warmup`` less the rows the ring already overwrote."""
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or warmup < 0:
        raise ConfigError(f"warmup must be a whole number >= 0 (exposures), got {warmup!r}")
    overwritten = int(trace.metadata.get("records_overwritten") or 0)
    return min(len(trace), max(0, int(warmup) - overwritten))


def _duration_ms(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    present = (start != MISSING) & (stop != MISSING)
    return (stop[present] - start[present]).astype(np.float64) / 1e6


def end_to_end_origin(trace: Trace) -> tuple[str, np.ndarray]:
    """(origin name, origin stamps on the host clock) of the end-to-end latencies; MISSING where unknown."""
    offset = trace.metadata.get("rig_to_host_offset_ns")
    if offset is None:
        return ORIGIN_EXPOSURE_RECEIVED, trace.stage("exposure_received")
    ends = trace.exposure_end_ns
    return ORIGIN_EXPOSURE_END, np.where(ends != MISSING, ends + np.int64(offset), MISSING)


def span_durations_ms(trace: Trace, warmup: int = 0) -> dict[str, np.ndarray]:
    """Per report stage, the durations in ms of the exposures after warm-up that have both stamps.

    Also ``end_to_end_first``, ``end_to_end_last`` and ``e2e_less_inference`` (see the module docstring), and
    ``exposure_delivery`` when the rig-to-host clock offset is known.
    """
    skip = effective_warmup(trace, warmup)
    stamps = trace.stamps_ns[skip:]
    durations = {name: _duration_ms(stamps[:, STAGE_INDEX[a]], stamps[:, STAGE_INDEX[b]]) for name, a, b in SPANS}
    origin_name, origin = end_to_end_origin(trace)
    origin = origin[skip:]
    if origin_name == ORIGIN_EXPOSURE_END:
        durations[EXPOSURE_DELIVERY] = _duration_ms(origin, stamps[:, STAGE_INDEX["exposure_received"]])
    first = stamps[:, STAGE_INDEX["first_output_published"]]
    last = stamps[:, STAGE_INDEX["last_output_published"]]
    durations["end_to_end_first"] = _duration_ms(origin, first)
    durations["end_to_end_last"] = _duration_ms(origin, last)
    start, stop = stamps[:, STAGE_INDEX["inference_start"]], stamps[:, STAGE_INDEX["inference_end"]]
    complete = (origin != MISSING) & (last != MISSING) & (start != MISSING) & (stop != MISSING)
    durations["e2e_less_inference"] = ((last - origin) - (stop - start))[complete].astype(np.float64) / 1e6
    return durations


def _stats(samples_ms: np.ndarray) -> dict:
    stats = latency_stats(samples_ms, unit="ms")
    del stats["warmup_excluded"], stats["percentile_method"]  # stated once, at the top of the report
    return stats


def _integer_counters(counters: Mapping, prefix: str = "") -> dict[str, int]:
    """Whole-number counters, nested ones (``skipped_by_reason``) flattened to ``outer.inner``."""
    flat = {}
    for key, value in counters.items():
        if isinstance(value, Mapping):
            flat.update(_integer_counters(value, f"{prefix}{key}."))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = int(value)
    return flat


def build_report(trace: Trace, *, warmup: int = 0, counters: Mapping | None = None,
                 environment: Mapping | None = None, power: Mapping | None = None) -> dict:
    """The report dict of a trace. ``counters`` (drops, gaps... from the pipeline) and ``environment``
    default to those stored in the trace; given ones are merged over them. ``power``: a
    :func:`spikereveal.bench.power.power_summary` (Jetson), else the trace's ``power`` metadata, else null."""
    skip = effective_warmup(trace, warmup)
    durations = span_durations_ms(trace, warmup)
    stages = {}
    names = [name for name, _, _ in SPANS]
    spans = {name: (a, b) for name, a, b in SPANS}
    if EXPOSURE_DELIVERY in durations:
        names.insert(0, EXPOSURE_DELIVERY)
        spans[EXPOSURE_DELIVERY] = (ORIGIN_EXPOSURE_END, "exposure_received")
    for name in names:
        stages[name] = {"from": spans[name][0], "to": spans[name][1], **_stats(durations[name])}
    origin_name, _ = end_to_end_origin(trace)
    end_to_end = {"origin": origin_name, "to": "last_output_published", **_stats(durations["end_to_end_last"]),
                  "first_output": {"to": "first_output_published", **_stats(durations["end_to_end_first"])}}
    less_inference = _stats(durations["e2e_less_inference"])

    last = trace.stage("last_output_published")[skip:]
    published = last != MISSING
    ends = trace.exposure_end_ns[skip:]
    outputs = trace.outputs[skip:]
    k = trace.metadata.get("k")
    if k is None and published.any():
        k = int(np.median(outputs[published]))
    rig_rate = rate_hz(ends[ends != MISSING])
    rates = throughput(last[published], outputs[published], k=k, exposure_rate_hz=rig_rate)
    del rates["warmup_excluded"]

    drops = _integer_counters(trace.metadata.get("counters") or {})
    drops.update(_integer_counters(counters or {}))
    drops["traced_not_published"] = int((~published).sum())
    drops["records_overwritten"] = int(trace.metadata.get("records_overwritten") or 0)
    env = dict(trace.metadata.get("environment") or {})
    env.update(environment or {})
    return {
        "schema_version": SCHEMA_VERSION,
        "percentile_method": PERCENTILE_METHOD,
        "warmup_exposures": int(warmup),
        "exposures": {"traced": len(trace), "warmup_excluded": skip, "measured": len(trace) - skip,
                      "published": int(published.sum())},
        "stages": stages,
        "end_to_end": end_to_end,
        "e2e_less_inference_p99_ms": less_inference["p99_ms"],
        "e2e_less_inference": less_inference,
        "throughput": rates,
        "drops": drops,
        "environment": env,
        "power": dict(power) if power is not None else trace.metadata.get("power"),
    }


def _check_stats(block, where: str, source) -> None:
    if not isinstance(block, Mapping):
        raise FormatError(source, f"{where} must be an object, got {type(block).__name__}")
    missing = [name for name in STAT_FIELDS if name not in block]
    if missing:
        raise FormatError(source, f"{where} lacks {missing}")
    count = block["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise FormatError(source, f"{where}.count must be a whole number >= 0, got {count!r}")
    for name in STAT_FIELDS:
        if name in ("count", "cv_warning"):
            continue
        value = block[name]
        if count == 0:
            if value is not None:
                raise FormatError(source, f"{where}.{name} must be null when count is 0, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise FormatError(source, f"{where}.{name} must be a finite number, got {value!r}")
    if count:
        ordered = [block[name] for name in ("min_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "p99_9_ms", "max_ms")]
        if any(b < a for a, b in zip(ordered, ordered[1:])):
            raise FormatError(source, f"{where}: min <= p50 <= ... <= p99.9 <= max does not hold: {ordered}")


def validate_report(report, source="report") -> None:
    """Raise FormatError (naming ``source``, e.g. the file) unless ``report`` follows the report schema."""
    if not isinstance(report, Mapping):
        raise FormatError(source, f"a report must be a JSON object, got {type(report).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in report]
    if missing:
        raise FormatError(source, f"not a pipeline report: missing top-level keys {missing}")
    if report["schema_version"] != SCHEMA_VERSION:
        raise FormatError(source, f"schema_version {report['schema_version']!r} is not {SCHEMA_VERSION}; make the "
                          "report again from its trace: spikereveal bench report TRACE.npz --json REPORT")
    if not isinstance(report["stages"], Mapping) or not report["stages"]:
        raise FormatError(source, "stages must be a non-empty object (stage name -> statistics)")
    for name, block in report["stages"].items():
        _check_stats(block, f"stages.{name}", source)
    _check_stats(report["end_to_end"], "end_to_end", source)
    _check_stats(report["end_to_end"].get("first_output"), "end_to_end.first_output", source)
    value = report["e2e_less_inference_p99_ms"]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise FormatError(source, f"e2e_less_inference_p99_ms must be a number or null, got {value!r}")
    for key in ("throughput", "drops", "environment"):
        if not isinstance(report[key], Mapping):
            raise FormatError(source, f"{key} must be an object")
    if report.get("power") is not None and not isinstance(report["power"], Mapping):
        raise FormatError(source, "power must be an object or null")
    for key, count in report["drops"].items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise FormatError(source, f"drops.{key} must be a whole number >= 0, got {count!r}")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(report: Mapping) -> str:
    """A printable table: one line per stage, end to end, end to end less inference, then throughput, drops, machine."""
    header = f"{'stage':<22}{'count':>7}{'p50':>10}{'p90':>10}{'p99':>10}{'p99.9':>10}{'max':>10}{'mean':>10}  ms"
    lines = [header]

    def row(name: str, block: Mapping) -> None:
        flag = "  CV>2.5%" if block.get("cv_warning") else ""
        lines.append(f"{name:<22}{block['count']:>7}" + "".join(
            f"{_ms(block[key]):>10}" for key in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms", "mean_ms"))
            + flag)

    for name, block in report["stages"].items():
        row(name, block)
    e2e = report["end_to_end"]
    row("e2e first output", e2e["first_output"])
    row("e2e last output", e2e)
    if isinstance(report.get("e2e_less_inference"), Mapping):
        row("e2e less inference", report["e2e_less_inference"])
    lines.append(f"end to end from: {e2e.get('origin')}; percentiles: {report.get('percentile_method')}; "
                 f"warm-up: first {report.get('warmup_exposures', 0)} exposures excluded")
    rates = report["throughput"]

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines.append(f"throughput: {num(rates.get('exposures_per_s'), '.2f')} exposures/s, "
                 f"{num(rates.get('output_frames_per_s'), '.2f')} frames/s (K={rates.get('k')}); exposure rate "
                 f"{num(rates.get('exposure_rate_hz'), '.2f')} Hz; real-time factor "
                 f"{num(rates.get('real_time_factor'), '.3f')}")
    drops = {key: value for key, value in report["drops"].items() if value}
    lines.append("drops: " + (", ".join(f"{key}={value}" for key, value in sorted(drops.items())) or "none"))
    power = report.get("power")
    if power:
        per_frame = power.get("energy_per_frame_mj")
        lines.append(f"power: {num(power.get('mean_total_w'), '.2f')} W mean ({power.get('total_rail')}), "
                     f"{'-' if per_frame is None else format(per_frame, '.1f')} mJ per output frame")
    env = report["environment"]
    if env:
        gpu = ", ".join(g.get("name", "?") for g in env.get("gpus") or []) or "none"
        lines.append(f"machine: {env.get('cpu')}, {env.get('cores')} cores, GPU {gpu}; engine {env.get('engine')} "
                     f"({env.get('engine_precision')}), ORT threads {env.get('ort_threads')}")
        jetson = env.get("jetson")
        if jetson:
            lines.append(f"jetson: {jetson.get('model')}, power mode {jetson.get('power_mode')}, "
                         f"jetson_clocks {'shown' if jetson.get('jetson_clocks') else 'unknown (needs root)'}")
    return "\n".join(lines)
