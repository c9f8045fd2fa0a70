"""The non-inference cost of one exposure: the worker's input preparation and post-processing, timed alone.

:func:`time_exposure_path` runs the real :class:`~spikereveal.stream.stage.ExposureProcessor` on a
synthetic exposure of a given geometry with a pass-through runner (no network), and reports the
processor's own ``prepare_ns`` (frame copy or warp, window cut into uint8 spike levels) and
``postprocess_ns`` (only for ``bgr_f32`` output: the graph already gives uint8 BGR) per exposure, plus their
sum (``prepare_plus_postprocess``: serve's ``non_inference_work_ms`` less ingest and publish). Pure: no
sockets, no files; ``bench pipeline`` can call it to break its non-inference figure down.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from spikereveal.engines.runners import Runner
from spikereveal.errors import ConfigError
from spikereveal.kernels.packing import pack_frames
from spikereveal.kernels.timing import DEFAULT_MARGIN_FRAMES, exposure_window
from spikereveal.stream.stats import latency_stats

STAGES = ("prepare", "postprocess", "prepare_plus_postprocess")
PASS_THROUGH = "pass-through"
SPIKE_DENSITY = 0.2


class PassThroughRunner(Runner):
    """No network, to isolate the non-inference cost: every sharp frame is the blurry frame (one copy of
    it per output frame, inside ``infer``, so it counts as inference)."""

    name = PASS_THROUGH

    def _load(self) -> None:
        self.sharp = np.zeros(self.shape.sharp, np.uint8)

    def _infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        target = self.sharp if out is None else out
        np.copyto(target, image)  # (1, H, W, 3) broadcast over the K frames
        return target

    def describe(self) -> dict:
        return {**super().describe(), "note": "pass-through: the blurry frame is returned, no network"}


def synthetic_job(shape, exposure_frames: int = 300, rate_hz: float = 20000.0,
                  margin_frames: int = DEFAULT_MARGIN_FRAMES, seed: int = 0, exposure_id: int = 0):
    """A ReadyJob for ``shape`` (network grid H x W, spikes H/4 x W/4): random uint8 frame and spikes."""
    from spikereveal.kernels.images import SPIKE_TO_IMAGE_SCALE
    from spikereveal.stream.sync import ReadyJob

    if exposure_frames < 1:
        raise ConfigError(f"exposure_frames must be >= 1, got {exposure_frames}")
    rng = np.random.default_rng(seed)
    spike_height, spike_width = shape.height // SPIKE_TO_IMAGE_SCALE, shape.width // SPIKE_TO_IMAGE_SCALE
    period_ns = 1e9 / rate_hz
    start_ns = int(round((margin_frames + 1) * period_ns))
    duration_ns = int(round(exposure_frames * period_ns))
    window = exposure_window(start_ns, duration_ns, 0, rate_hz, shape.k, margin_frames)
    frames = window.window_stop - window.window_first
    bits = rng.random((frames, spike_height, spike_width)) < SPIKE_DENSITY
    return ReadyJob(
        exposure_id=exposure_id, start_ns=start_ns, duration_ns=duration_ns,
        image=rng.integers(0, 256, (shape.height, shape.width, 3), dtype=np.uint8),
        packed=pack_frames(bits), window=window, spike_height=spike_height, spike_width=spike_width,
        received_ns=0, ready_ns=0,
    )


def time_exposure_path(shape, repeats: int = 20, warmup: int = 2, output_pixel_format: str = "bgr8",
                       seed: int = 0, processor_factory: Callable | None = None) -> dict:
    """Per-exposure prepare / post-process / their sum over ``repeats`` exposures (after ``warmup``).

    ``shape``: an engines InputShape (e.g. ``bench.engines.geometry_shape("rsb")``).
    ``processor_factory(runner) -> processor``: defaults to the worker's ExposureProcessor.
    Returns ``{"geometry", "repeats", "warmup", "output_pixel_format", "stages": {stage: latency_stats}}``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")
    if processor_factory is None:
        from spikereveal.stream.stage import ExposureProcessor

        def processor_factory(runner):
            return ExposureProcessor(runner, output_pixel_format=output_pixel_format)

    processor = processor_factory(PassThroughRunner(shape).load())
    job = synthetic_job(shape, seed=seed)
    samples_ns = {stage: [] for stage in STAGES}
    for _ in range(warmup + repeats):
        result = processor.process(job)
        samples_ns["prepare"].append(result.prepare_ns)
        samples_ns["postprocess"].append(result.postprocess_ns)
        samples_ns["prepare_plus_postprocess"].append(result.prepare_ns + result.postprocess_ns)
        del result  # as a publisher would: the output is released before the next exposure
    return {
        "geometry": {"k": shape.k, "height": shape.height, "width": shape.width,
                     "spike_frames": shape.spike_frames},
        "repeats": repeats,
        "warmup": warmup,
        "output_pixel_format": output_pixel_format,
        "stages": {stage: latency_stats(values, warmup=warmup, unit="ns") for stage, values in samples_ns.items()},
    }


def format_table(result: dict) -> str:
    geometry = result["geometry"]
    lines = [f"exposure path K={geometry['k']} {geometry['width']}x{geometry['height']} "
             f"({result['output_pixel_format']}, {result['repeats']} exposures after {result['warmup']} warm-up)",
             f"{'stage':<14}{'min':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  ms"]
    for stage, stats in result["stages"].items():
        lines.append(f"{stage:<14}" + "".join(f"{stats[key]:9.2f}" for key in
                                                ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")))
    return "\n".join(lines)
