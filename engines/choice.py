"""Which engine runs the network, from what, assembled in one place for ``deblur``, ``serve``, workers and ``eval``.

:class:`EngineChoice` says engine, precision and model (checkpoint or ONNX); :func:`prepare_runner` turns it into
an unloaded runner for a shape, exporting the checkpoint once into ``<work_dir>/onnx/`` when ort/trt need an
ONNX file (reused while the checkpoint hash and precision match; an int8 export calibrates on the given
recordings and is keyed by them); :func:`runner_factory` is the ``shape -> unloaded Runner`` callable that
serve and its workers load lazily.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from spikereveal.engines.cache import check_precision_name, file_sha256
from spikereveal.engines.runners import InputShape, Runner, RunnerOptions, create_runner
from spikereveal.errors import ConfigError

__all__ = ["EngineChoice", "prepare_runner", "runner_factory"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs the network and from what: checkpoint (torch, or exported for ort/trt) or ONNX."""

    engine: str = "ort"
    precision: str = "fp32"
    model: str | None = None  # LDN checkpoint or a shipped model's name ("default", "lite"); None: the shipped default
    onnx_path: str | None = None  # ort/trt: use this export instead of exporting the checkpoint
    options: RunnerOptions = field(default_factory=RunnerOptions)

    def __post_init__(self):
        check_precision_name(self.precision)
        if self.engine == "torch" and self.onnx_path is not None:
            raise ConfigError("--onnx is for the ort and trt engines; the torch engine runs the checkpoint")
        if self.engine == "triton":
            if self.model is not None or self.onnx_path is not None:
                raise ConfigError("the triton engine runs the model its server holds; --model/--onnx are for local "
                                  "engines (put a model on the server with 'spikereveal export --triton-repo DIR')")
            if self.options.triton is None:
                raise ConfigError("the triton engine needs --triton-url HOST:PORT (the server's gRPC port)")
        elif self.options.triton is not None:
            raise ConfigError(f"--triton-url/--triton-model are for --engine triton, not {self.engine}")


def _cached_export(choice: EngineChoice, shape: InputShape, out_dir: Path, calib_recordings: Sequence) -> Path:
    from spikereveal.engines.export import ExportConfig, export_checkpoint, resolve_model_path
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    checkpoint = resolve_model_path(choice.model)
    config = ExportConfig(precision=choice.precision, k=shape.k, height=shape.height, width=shape.width)
    calib = list(calib_recordings) if choice.precision == "int8" else []
    name = f"ldn_{choice.precision}_{shape.k}x{shape.height}x{shape.width}"
    if calib:  # an int8 file is only reused for the same calibration data
        from spikereveal.engines.int8_data import cache_key

        key = cache_key([Path(p) for p in calib], shape.k, config.calibration_windows, shape.spike_frames, True)
        name += f"_calib{key[:12]}"
    target = out_dir / "onnx" / f"{name}.onnx"
    sha = file_sha256(checkpoint)
    if target.is_file():
        meta = read_onnx_metadata(target)
        if meta.get("source_sha256") == sha and meta.get("precision") == choice.precision:
            logger.info("reusing %s", target)
            return target
    logger.info("exporting %s to %s", checkpoint, target)
    return export_checkpoint(checkpoint, target, config, calib_recordings=calib)


def prepare_runner(choice: EngineChoice, shape: InputShape, out_dir: str | os.PathLike,
                   calib_recordings: str | os.PathLike | Sequence = ()) -> Runner:
    """An (unloaded) runner for ``shape``; exports the checkpoint to ``<out_dir>/onnx`` when ort/trt need it.

    ``calib_recordings`` (one path or several): what an int8 export calibrates on; the cached file is keyed
    by them, so a different calibration set gets its own export.
    """
    if choice.engine == "triton":  # the model is on the server: nothing to export here
        return create_runner("triton", shape, precision=choice.precision, options=choice.options)
    if choice.engine == "torch":
        from spikereveal.engines.export import resolve_model_path

        return create_runner("torch", shape, model=resolve_model_path(choice.model), precision=choice.precision,
                             options=choice.options)
    if isinstance(calib_recordings, (str, os.PathLike)):
        calib_recordings = [calib_recordings]
    onnx_path = choice.onnx_path
    if onnx_path is None and choice.engine == "ort" and choice.precision == "fp32":
        from spikereveal.engines.export import default_onnx_path, resolve_model_path, shipped_onnx_for

        # a shipped student (the default, or one named with --model lite) runs its shipped export: no torch needed
        onnx_path = default_onnx_path() if choice.model is None else shipped_onnx_for(resolve_model_path(choice.model))
    if onnx_path is None:
        onnx_path = _cached_export(choice, shape, Path(out_dir), calib_recordings)
    return create_runner(choice.engine, shape, onnx_path=onnx_path, precision=choice.precision,
                         options=choice.options)


def runner_factory(choice: EngineChoice, work_dir: str | os.PathLike) -> Callable[[InputShape], Runner]:
    """``shape -> unloaded Runner`` for ``choice``; ort/trt export the checkpoint into ``work_dir``."""

    def factory(shape: InputShape) -> Runner:
        return prepare_runner(choice, shape, work_dir)

    return factory
