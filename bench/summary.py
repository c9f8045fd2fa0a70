"""``spikereveal bench all``: every benchmark with small repeats, one summary for a machine.

Writes ``summary.json`` (one key per benchmark, ``headline`` with the numbers that matter, ``environment``)
and ``summary.md`` (those headline numbers as Markdown tables). Two machines' ``summary.json`` compare
side by side with ``spikereveal bench compare A.json B.json`` (it compares numeric leaves by dotted name).

Benchmarks: ``kernels`` (numba vs numpy), ``transport`` (replay -> ingest over loopback), ``engines``
(every available runner; unavailable ones are listed as skipped) and ``pipeline``: ``pass_through`` (rsb
geometry, no network: the non-inference cost) and ``network`` (a short run of the ``ort`` engine on the
tiny preset). A benchmark that fails is recorded as ``{"error": ...}`` and the others still run.
``quick``: tiny geometries and few repeats, for a smoke test in seconds.

Weights for the engine and network pipeline runs: ``model`` if given, else the shipped model, else a seeded
random LDN (same cost; ``environment.model`` says which).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

from spikereveal.errors import SpikeRevealError

__all__ = ["bench_all", "headline", "format_markdown", "SUMMARY_JSON", "SUMMARY_MD", "SUMMARY_FORMAT"]

logger = logging.getLogger(__name__)

SUMMARY_FORMAT = "spikereveal-bench-summary/1"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

# per benchmark: keyword arguments for the full run and the quick one
FULL = {
    "kernels": {"frames": 2048, "repeats": 5},
    "transport": {"seconds": 1.0},
    "engines": {"geometries": ("gopro", "rsb"), "repeats": 3, "warmup": 1},
    "pipeline_pass_through": {"preset": "rsb", "exposures": 20},  # simulating rsb takes ~5 s an exposure
    "pipeline_network": {"preset": "tiny", "exposures": 12},
}
QUICK = {
    "kernels": {"frames": 64, "repeats": 1, "height": 40, "width": 64},
    "transport": {"seconds": 0.05, "height": 40, "width": 64},
    "engines": {"geometries": ((64, 96),), "repeats": 2, "warmup": 1, "runners": ("ort",)},
    "pipeline_pass_through": {"preset": "tiny", "exposures": 6, "k": 3},
    "pipeline_network": {"preset": "tiny", "exposures": 4, "k": 3},
}


def _weights(model) -> tuple[str | None, bool]:
    """(checkpoint, random_weights) for the network runs: the given model, the shipped one, else random."""
    if model is not None:
        return str(model), False
    from spikereveal.engines.export import default_model_path

    shipped = default_model_path()
    return (str(shipped), False) if shipped is not None else (None, True)


def bench_all(out_dir, *, quick: bool = False, model=None, threads: int | None = None,
              progress: Callable[[str], None] | None = None) -> dict:
    """Run the benchmarks, write ``summary.json`` and ``summary.md`` into ``out_dir``; returns the summary
    (plus ``markdown`` and ``files``, which are not written into the JSON)."""
    from spikereveal.environment import collect_environment

    settings = QUICK if quick else FULL
    say = progress or (lambda message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, random_weights = _weights(model)
    results: dict = {}
    seconds: dict = {}

    def run(name: str, function: Callable[[], dict]) -> None:
        say(name)
        started = time.perf_counter()
        try:
            results[name] = function()
        except (SpikeRevealError, ImportError, OSError) as exc:  # one broken bench must not lose the others
            logger.warning("bench %s failed: %s", name, exc)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        seconds[name] = time.perf_counter() - started

    def kernels():
        from spikereveal.bench.kernels import run_kernel_bench

        return run_kernel_bench(**settings["kernels"])

    def transport():
        from spikereveal.bench.transport import bench_transport

        return bench_transport(**settings["transport"])

    def engines():
        from spikereveal.bench.engines import bench_engines

        return bench_engines(threads=threads, model_path=checkpoint, **settings["engines"])

    def pipeline():
        from spikereveal.bench.pipeline import bench_pipeline

        reports = {}
        say("pipeline: pass-through")
        reports["pass_through"] = bench_pipeline(pass_through=True, threads=threads,
                                                 **settings["pipeline_pass_through"])
        say("pipeline: ort network")
        reports["network"] = bench_pipeline(engine="ort", model=checkpoint, random_weights=random_weights,
                                            threads=threads, **settings["pipeline_network"])
        return reports

    for name, function in (("kernels", kernels), ("transport", transport), ("engines", engines),
                           ("pipeline", pipeline)):
        run(name, function)

    summary = {
        "summary_format": SUMMARY_FORMAT,
        "quick": quick,
        "headline": headline(results),
        **results,
        "seconds": seconds,
        "environment": collect_environment(
            engine="ort", ort_threads=threads,
            extra={"model": checkpoint or "random seeded LDN (timing only)", "random_weights": random_weights}),
    }
    json_path, markdown_path = out_dir / SUMMARY_JSON, out_dir / SUMMARY_MD
    json_path.write_text(json.dumps(summary, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    markdown = format_markdown(summary)
    markdown_path.write_text(markdown, encoding="utf-8")
    return {**summary, "markdown": markdown, "files": {"json": str(json_path), "markdown": str(markdown_path)}}


def _get(data, *path):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def headline(results: dict) -> dict:
    """The few numbers per benchmark that a reader compares first (missing ones are None)."""
    out: dict = {}
    kernels = results.get("kernels") or {}
    if "error" not in kernels:
        out["kernels"] = {
            "accumulate_frames_per_s": _get(kernels, "accumulate", "frames_per_s"),
            "accumulate_speedup": _get(kernels, "accumulate", "speedup"),
            "extract_window_frames_per_s": _get(kernels, "extract_window", "frames_per_s"),
        }
    transport = results.get("transport") or {}
    for run in transport.get("runs") or []:
        label = "unpaced" if run.get("target_frames_per_s") is None else "paced"
        out.setdefault("transport", {})[label] = {
            "frames_per_s": run.get("frames_per_s"),
            "block_latency_p99_ms": _get(run, "latency_per_block", "p99_ms"),
            "frames_lost": _get(run, "loss", "frames_lost"),
        }
    engines = results.get("engines") or {}
    for geometry, table in engines.items():
        if geometry in ("environment", "error") or not isinstance(table, dict):
            continue
        for runner, entry in table.items():
            out.setdefault("engines", {})[f"{geometry}.{runner}"] = {
                "window_ms_p50": entry.get("window_ms_p50"), "frames_per_s": entry.get("frames_per_s")}
    for name, report in (results.get("pipeline") or {}).items():
        if not isinstance(report, dict) or "stages" not in report:
            continue
        out.setdefault("pipeline", {})[name] = {
            "preset": _get(report, "pipeline", "preset"),
            "engine": _get(report, "pipeline", "engine"),
            "e2e_less_inference_p99_ms": report.get("e2e_less_inference_p99_ms"),
            "end_to_end_p50_ms": _get(report, "end_to_end", "p50_ms"),
            "end_to_end_p99_ms": _get(report, "end_to_end", "p99_ms"),
            "inference_p50_ms": _get(report, "stages", "inference", "p50_ms"),
            "output_frames_per_s": _get(report, "throughput", "output_frames_per_s"),
            "real_time_factor": _get(report, "throughput", "real_time_factor"),
            "end_to_end_mean_over_independent": _get(report, "independent", "agreement", "ratios", "end_to_end_mean"),
        }
    return out


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e3 else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(title: str, rows: dict) -> list[str]:
    """One Markdown table: a row per entry of ``rows`` (name -> flat dict), a column per key."""
    columns: list[str] = []
    for values in rows.values():
        columns += [key for key in values if key not in columns]
    lines = [f"## {title}", "", "| | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(values.get(column)) for column in columns) + " |")
    return lines + [""]


def format_markdown(summary: dict) -> str:
    env = summary.get("environment") or {}
    gpus = ", ".join(g.get("name", "?") for g in env.get("gpus") or []) or "none"
    lines = ["# spikereveal bench summary", "",
             f"Machine: {env.get('cpu')}, {env.get('cores')} cores, GPU {gpus}; spikereveal {env.get('spikereveal')}, "
             f"load average {_cell(env.get('load_average_1m'))}; weights: {env.get('model')}"
             + ("; **quick settings** (smoke test, not comparable to a full run)" if summary.get("quick") else ""),
             ""]
    head = summary.get("headline") or {}
    if "kernels" in head:
        lines += _table("Kernels (numba, 1 thread)", {"spike kernels": head["kernels"]})
    if "transport" in head:
        lines += _table("Transport (replay -> ingest, loopback)", head["transport"])
    if "engines" in head:
        lines += _table("Engines (one K-frame window)", head["engines"])
    if "pipeline" in head:
        lines += _table("Pipeline (replay -> serve, loopback, traced)", head["pipeline"])
    errors = {name: value["error"] for name, value in summary.items()
              if isinstance(value, dict) and "error" in value}
    if errors:
        lines += ["## Failed", ""] + [f"- {name}: {message}" for name, message in errors.items()] + [""]
    seconds = summary.get("seconds") or {}
    lines.append("Seconds per benchmark: " + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items()))
    return "\n".join(lines) + "\n"
