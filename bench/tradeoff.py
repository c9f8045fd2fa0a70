"""``spikereveal bench tradeoff``: speed against quality per model, from reports other commands wrote.

Quality: the student's PSNR/SSIM in ``spikereveal eval`` JSON reports, one per test family, averaged over the
families (each family weighs the same, as the generalisation tables in training/README.md). Speed: one
``bench engines --model ...`` JSON, the model's window time (median) at one geometry and runner over K, in ms
per output frame, and its multiply-adds per frame. Nothing is measured here; the plot is
``bench.plots.plot_speed_quality``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

from spikereveal.errors import ConfigError


@dataclass(frozen=True)
class TradeoffPoint:
    model: str
    ms_per_frame: float
    psnr: float
    ssim: float
    macs_per_frame: float | None
    families: int

    def to_dict(self) -> dict:
        return asdict(self)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{what} {path} cannot be read as JSON ({exc})") from exc


def _student_scores(path: Path) -> tuple[float, float]:
    report = _read_json(path, "eval report")
    student = (report.get("methods") or {}).get("student") if isinstance(report, dict) else None
    if not isinstance(student, dict) or "psnr" not in student:
        raise ConfigError(f"{path} holds no student scores: write it with 'spikereveal eval --model M ... --json'")
    return float(student["psnr"]), float(student["ssim"])


def tradeoff_points(engines_json: Path, evals: Mapping[str, Sequence[Path]], geometry: str = "gopro",
                    runner: str = "ort") -> list[TradeoffPoint]:
    """One point per model in ``evals`` (model name as in the bench engines report -> its eval reports)."""
    results = _read_json(engines_json, "bench engines report")
    table = results.get(geometry) if isinstance(results, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(f"{engines_json} has no {geometry!r} geometry; it has "
                          f"{sorted(k for k in (results or {}) if k != 'environment')}")
    k = int((results.get("environment") or {}).get("k") or 0)
    if k < 1:
        raise ConfigError(f"{engines_json} does not say K (environment.k); is it a bench engines report?")
    points = []
    for model, paths in evals.items():
        entry = table.get(f"{model}/{runner}") or (table.get(runner) if len(evals) == 1 else None)
        if entry is None:
            raise ConfigError(f"{engines_json} has no {model}/{runner} entry at {geometry}: run bench engines with "
                              f"--model {' '.join(evals)} --runner {runner}")
        if not paths:
            raise ConfigError(f"no eval report given for {model}")
        scores = [_student_scores(Path(p)) for p in paths]
        points.append(TradeoffPoint(
            model=model, ms_per_frame=float(entry["window_ms_p50"]) / k,
            psnr=sum(s[0] for s in scores) / len(scores), ssim=sum(s[1] for s in scores) / len(scores),
            macs_per_frame=entry.get("macs_per_frame"), families=len(scores)))
    return points


def parse_eval_spec(text: str) -> tuple[str, list[Path]]:
    """``NAME=a.json,b.json`` -> (NAME, [paths])."""
    name, sep, files = text.partition("=")
    if not sep or not name or not files:
        raise ConfigError(f"--eval takes NAME=REPORT.json[,REPORT.json...], got {text!r}")
    return name, [Path(f) for f in files.split(",") if f]


def format_points(points: Sequence[TradeoffPoint]) -> str:
    lines = [f"{'model':<12} {'ms/frame':>10} {'GMAC/frame':>10} {'PSNR dB':>8} {'SSIM':>7} {'families':>8}"]
    for p in points:
        macs = "" if p.macs_per_frame is None else f"{p.macs_per_frame / 1e9:.3f}"
        lines.append(f"{p.model:<12} {p.ms_per_frame:>10.1f} {macs:>10} {p.psnr:>8.2f} {p.ssim:>7.4f} {p.families:>8}")
    return "\n".join(lines)


__all__ = ["TradeoffPoint", "format_points", "parse_eval_spec", "tradeoff_points"]
