"""PNG plots of a traced run: latency CDF per stage, a timeline of the run, throughput over time.

matplotlib is optional (the ``plot`` extra) and imported only when a plot is drawn. Figures are drawn
on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never through pyplot, so
plotting neither needs a display nor touches global pyplot state (safe inside a running service).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from spikereveal.bench.report import SPANS, effective_warmup, end_to_end_origin, span_durations_ms
from spikereveal.stream.stats import nearest_rank_percentile, rate_hz
from spikereveal.stream.trace import MISSING, STAGE_INDEX, Trace
from spikereveal.errors import ConfigError, require

PLOT_NAMES = ("latency_cdf", "timeline", "throughput")
#: legend labels of report stages whose key alone would mislead (the report's keys stay as they are)
STAGE_LABELS = {"preprocess": "queue wait + input prep"}
DEFAULT_TIMELINE_EXPOSURES = 40
_DPI = 110


def _new_figure(width_in: float, height_in: float):
    require("matplotlib", "latency plots", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def plot_latency_cdf(durations_ms: Mapping[str, np.ndarray], path, title: str = "Latency per stage") -> Path:
    """Empirical CDF (log-scaled ms) of each stage's durations; stages without samples are left out."""
    figure = _new_figure(8, 5)
    axes = figure.add_subplot()
    drawn = 0
    for name, samples in durations_ms.items():
        values = np.sort(np.asarray(samples, dtype=np.float64))
        if values.size == 0:
            continue
        # nearest-rank CDF: fraction of samples <= value, as a step function
        axes.step(np.maximum(values, 1e-4), np.arange(1, values.size + 1) / values.size, where="post",
                  label=f"{STAGE_LABELS.get(name, name)} (p99 {nearest_rank_percentile(values, 99):.2f} ms)")
        drawn += 1
    if drawn == 0:
        axes.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.set_xscale("log")
        axes.legend(fontsize="small", loc="lower right")
    for level in (0.5, 0.9, 0.99):
        axes.axhline(level, color="0.8", linewidth=0.8, zorder=0)
    axes.set_xlabel("duration (ms, log scale)")
    axes.set_ylabel("fraction of exposures")
    axes.set_ylim(0, 1.01)
    axes.set_title(title)
    return _save(figure, path)


def plot_timeline(trace: Trace, path, *, warmup: int = 0, max_exposures: int = DEFAULT_TIMELINE_EXPOSURES) -> Path:
    """One row per exposure (the first ``max_exposures`` after warm-up), one coloured bar per stage,
    on a common time axis (ms since the first stamp shown); a dot marks the exposure end when known."""
    if max_exposures < 1:
        raise ConfigError(f"max_exposures must be >= 1, got {max_exposures}")
    skip = effective_warmup(trace, warmup)
    rows = slice(skip, min(len(trace), skip + max_exposures))
    stamps = trace.stamps_ns[rows]
    origin_name, origin = end_to_end_origin(trace)
    origin = origin[rows] if origin_name == "exposure_end" else np.full(stamps.shape[0], MISSING, np.int64)
    present = np.concatenate([stamps[stamps != MISSING], origin[origin != MISSING]])
    figure = _new_figure(10, max(3.0, 0.22 * stamps.shape[0] + 1.5))
    axes = figure.add_subplot()
    if present.size == 0:
        axes.text(0.5, 0.5, "no stamps", ha="center", va="center", transform=axes.transAxes)
        return _save(figure, path)
    zero = present.min()
    colours = {name: f"C{index}" for index, (name, _, _) in enumerate(SPANS)}
    labelled = set()
    ids = trace.exposure_id[rows]
    for row in range(stamps.shape[0]):
        for name, a, b in SPANS:
            if name == "exposure_wait":
                continue  # overlaps sync_wait on the same row; the CDF shows it
            start, stop = stamps[row, STAGE_INDEX[a]], stamps[row, STAGE_INDEX[b]]
            if start == MISSING or stop == MISSING:
                continue
            axes.barh(row, max(stop - start, 0) / 1e6, left=(start - zero) / 1e6, height=0.7, color=colours[name],
                      label=None if name in labelled else STAGE_LABELS.get(name, name))
            labelled.add(name)
        if origin[row] != MISSING:
            axes.plot((origin[row] - zero) / 1e6, row, "k.", markersize=4,
                      label=None if "exposure end" in labelled else "exposure end")
            labelled.add("exposure end")
    axes.set_yticks(range(stamps.shape[0]), [str(i) for i in ids], fontsize="x-small")
    axes.invert_yaxis()
    axes.set_xlabel("time since the first stamp (ms)")
    axes.set_ylabel("exposure id")
    axes.set_title(f"Timeline of exposures {ids[0]}..{ids[-1]}" if ids.size else "Timeline")
    if labelled:
        axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(figure, path)


def plot_throughput(trace: Trace, path, *, warmup: int = 0, window: int | None = None) -> Path:
    """Output frames per second over time, as a sliding rate over the last ``window`` completions
    (frames published by completions i-window+1..i over the time since completion i-window; no binning
    artefacts). ``window`` defaults to a tenth of the run, within 2..25. The real-time need (K x exposure
    rate) is a dashed line when known."""
    skip = effective_warmup(trace, warmup)
    last = trace.stage("last_output_published")[skip:]
    published = last != MISSING
    order = np.argsort(last[published], kind="stable")
    times_ns = last[published][order]
    frames = trace.outputs[skip:][published][order]
    figure = _new_figure(8, 4)
    axes = figure.add_subplot()
    if times_ns.size < 2 or times_ns[-1] == times_ns[0]:
        axes.text(0.5, 0.5, "fewer than two published exposures", ha="center", va="center", transform=axes.transAxes)
        return _save(figure, path)
    if window is None:
        window = min(25, max(2, times_ns.size // 10))
    elif window < 1:
        raise ConfigError(f"window must be >= 1 completion, got {window}")
    window = min(window, times_ns.size - 1)
    cumulative = np.cumsum(frames)
    elapsed_s = (times_ns[window:] - times_ns[:-window]) / 1e9
    produced = cumulative[window:] - cumulative[:-window]
    valid = elapsed_s > 0
    times_s = (times_ns[window:] - times_ns[0]) / 1e9
    rates = produced[valid] / elapsed_s[valid]
    axes.plot(times_s[valid], rates, drawstyle="steps-post",
              label=f"output frames/s (last {window} exposures)")
    ends = trace.exposure_end_ns[skip:]
    rate = rate_hz(ends[ends != MISSING])
    k = trace.metadata.get("k") or int(np.median(frames))
    top = float(rates.max()) if rates.size else 1.0
    if rate is not None and k:
        axes.axhline(k * rate, color="k", linestyle="--", linewidth=1, label=f"real time: {k} x {rate:.2f} Hz")
        top = max(top, k * rate)
    axes.set_ylim(0, 1.15 * top)
    axes.set_xlabel("time since the first published exposure (s)")
    axes.set_ylabel("output frames/s")
    axes.set_title("Throughput over time")
    axes.legend(fontsize="small", loc="lower right")
    return _save(figure, path)


def write_plots(trace: Trace, directory, *, warmup: int = 0,
                max_timeline_exposures: int = DEFAULT_TIMELINE_EXPOSURES) -> dict[str, Path]:
    """Write ``latency_cdf.png``, ``timeline.png`` and ``throughput.png`` into ``directory``; returns
    ``{name: path}``."""
    directory = Path(directory)
    durations = span_durations_ms(trace, warmup)
    cdf_series = {name: durations[name] for name, _, _ in SPANS}
    cdf_series["end_to_end_last"] = durations["end_to_end_last"]
    return {
        "latency_cdf": plot_latency_cdf(cdf_series, directory / "latency_cdf.png"),
        "timeline": plot_timeline(trace, directory / "timeline.png", warmup=warmup,
                                  max_exposures=max_timeline_exposures),
        "throughput": plot_throughput(trace, directory / "throughput.png", warmup=warmup),
    }


def plot_speed_quality(points, path, title: str = "Speed vs quality (unseen test families)") -> Path:
    """PSNR against ms per output frame (log scale), one labelled marker per model (``bench.tradeoff`` points)."""
    figure = _new_figure(8, 4.5)
    axes = figure.add_subplot()
    for point in points:
        axes.scatter([point.ms_per_frame], [point.psnr], s=60)
        macs = "" if point.macs_per_frame is None else f", {point.macs_per_frame / 1e9:.2f} GMAC"
        axes.annotate(f"{point.model} ({point.psnr:.2f} dB / {point.ssim:.3f}{macs})",
                      (point.ms_per_frame, point.psnr), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if points:
        axes.set_xscale("log")
        axes.margins(x=0.6, y=0.12)  # room for the labels (log axis: margins in decades)
    axes.set_xlabel("ms per output frame (bench engines, median window / K)")
    axes.set_ylabel("PSNR (dB), mean over test families")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    return _save(figure, path)
