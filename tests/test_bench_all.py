"""bench all: every benchmark on tiny settings, summary.json + summary.md, comparable with bench compare."""

from __future__ import annotations

import json

import pytest

from spikereveal.bench.compare import compare_summaries, load_summary
from spikereveal.bench.summary import SUMMARY_JSON, SUMMARY_MD, format_markdown, headline


@pytest.mark.slow
def test_bench_all_quick_writes_both_summaries(tmp_path, monkeypatch, capsys):
    pytest.importorskip("zmq")
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from spikereveal import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bench",))
    assert cli.main(["bench", "all", "--out", str(tmp_path), "--quick", "--threads", "1"]) == 0
    summary = load_summary(tmp_path / SUMMARY_JSON)
    for key in ("kernels", "transport", "engines", "pipeline", "environment", "headline"):
        assert key in summary
    assert not [name for name, value in summary.items() if isinstance(value, dict) and "error" in value]
    assert set(summary["pipeline"]) == {"pass_through", "network"}
    head = summary["headline"]
    assert head["pipeline"]["pass_through"]["engine"] == "pass-through"
    assert head["pipeline"]["network"]["engine"] == "ort" and head["pipeline"]["network"]["inference_p50_ms"] > 0
    assert head["kernels"]["accumulate_frames_per_s"] > 0 and "64x96.ort" in head["engines"]
    markdown = (tmp_path / SUMMARY_MD).read_text()
    for title in ("## Kernels", "## Transport", "## Engines", "## Pipeline"):
        assert title in markdown
    assert "| pass_through |" in markdown and "quick settings" in markdown
    compared = compare_summaries(summary, json.loads(json.dumps(summary)))
    keys = {row["key"] for row in compared["rows"]}
    assert "headline.pipeline.pass_through.e2e_less_inference_p99_ms" in keys
    assert all(row["better"] in ("same", None) for row in compared["rows"])
    assert "wrote" in capsys.readouterr().out


def test_headline_and_markdown_survive_a_failed_benchmark():
    results = {
        "kernels": {"error": "ImportError: no numba"},
        "engines": {"rsb": {"ort": {"window_ms_p50": 1234.5, "frames_per_s": 5.67}}, "environment": {}},
        "pipeline": {"pass_through": {"stages": {"inference": {"p50_ms": 0.01}}, "e2e_less_inference_p99_ms": 4.2,
                                      "end_to_end": {"p50_ms": 3.0, "p99_ms": 4.5}, "throughput": {},
                                      "pipeline": {"preset": "rsb", "engine": "pass-through"}}},
    }
    head = headline(results)
    assert "kernels" not in head and head["engines"] == {"rsb.ort": {"window_ms_p50": 1234.5, "frames_per_s": 5.67}}
    assert head["pipeline"]["pass_through"]["e2e_less_inference_p99_ms"] == 4.2
    markdown = format_markdown({**results, "headline": head, "seconds": {"kernels": 0.1}, "environment": {}})
    assert "## Failed" in markdown and "- kernels: ImportError: no numba" in markdown
    assert "| rsb.ort | 1,234 | 5.67 |" in markdown and "| pass_through | rsb | pass-through | 4.2 |" in markdown
