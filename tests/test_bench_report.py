"""Trace recorder and file, the report schema on a manual-clock run, environment probes, compare, CLI."""

import copy
import json
import os
import stat
import tracemalloc

import numpy as np
import pytest
from bench_support import (
    CUT_NS,
    DELIVERY_NS,
    FIRST_PUBLISH_NS,
    K,
    MS,
    PERIOD_NS,
    PREPROCESS_NS,
    PUBLISH_NS,
    e2e_last_ns,
    inference_ns,
    spike_lag_ns,
    synthetic_run,
)

from spikereveal import environment as env_module
from spikereveal.bench.compare import (
    better_direction,
    compare_summaries,
    flatten,
    format_compare_markdown,
    format_compare_table,
    load_summary,
)
from spikereveal.bench.power import PowerLogger, parse_tegrastats_line, power_summary, total_rail
from spikereveal.bench.report import SCHEMA_VERSION, SPANS, build_report, format_table, validate_report
from spikereveal.stream.stats import latency_stats
from spikereveal.stream.trace import (
    MISSING,
    NULL_RECORDER,
    STAGES,
    TRACE_FORMAT,
    Trace,
    TraceRecorder,
    create_recorder,
    load_trace,
    measure_mark_overhead,
    tracing_cost_fraction,
)
from spikereveal.errors import ConfigError, FormatError

WARMUP = 3


# ---- trace recorder and file -------------------------------------------------------------------------------

def test_stage_list_is_the_documented_pipeline_order():
    assert STAGES == ("last_spike_received", "exposure_received", "window_complete", "window_cut", "inference_start",
                      "inference_end", "first_output_published", "last_output_published")
    assert {a for _, a, _ in SPANS} | {b for _, _, b in SPANS} <= set(STAGES)


def test_recorder_rows_and_file_round_trip(tmp_path):
    recorder = synthetic_run(exposures=6, dropped=(2,))
    path = recorder.save(tmp_path / "run.trace", counters={"gaps": np.int64(3)}, environment={"cpu": "test cpu"})
    assert path == tmp_path / "run.trace" and path.exists()  # no ".npz" appended
    trace = load_trace(path)
    expected = recorder.trace()
    np.testing.assert_array_equal(trace.stamps_ns, expected.stamps_ns)
    np.testing.assert_array_equal(trace.exposure_id, np.arange(100, 106))
    np.testing.assert_array_equal(trace.exposure_end_ns, expected.exposure_end_ns)
    np.testing.assert_array_equal(trace.outputs, [K, K, 0, K, K, K])
    assert trace.metadata["trace_format"] == TRACE_FORMAT and trace.metadata["k"] == K
    assert trace.metadata["counters"] == {"gaps": 3} and trace.metadata["environment"] == {"cpu": "test cpu"}
    assert trace.metadata["rig_to_host_offset_ns"] == 0
    assert trace.stage("inference_start")[2] == MISSING and trace.stage("window_cut")[2] != MISSING


def test_ring_keeps_the_newest_rows_oldest_first():
    recorder = TraceRecorder(capacity=3)
    for i in range(5):
        slot = recorder.begin(i, i * 10)
        recorder.mark(slot, 0, 1000 + i)
    trace = recorder.trace()
    assert len(recorder) == 3 and recorder.records_overwritten == 2
    np.testing.assert_array_equal(trace.exposure_id, [2, 3, 4])
    np.testing.assert_array_equal(trace.stage("last_spike_received"), [1002, 1003, 1004])
    assert (trace.stamps_ns[:, 1:] == MISSING).all()  # a reused slot starts empty
    assert trace.metadata["records_overwritten"] == 2


def test_trace_file_columns_are_matched_by_name(tmp_path):
    stamps = np.array([[5, 1], [6, 2]], dtype=np.int64)
    metadata = {"trace_format": TRACE_FORMAT, "stages": ["inference_end", "inference_start"]}
    path = tmp_path / "partial.npz"
    np.savez(path, stamps_ns=stamps, exposure_id=np.array([1, 2]), exposure_end_ns=np.array([0, 0]),
             outputs=np.array([7, 7]), metadata=np.array(json.dumps(metadata)))
    trace = load_trace(path)
    np.testing.assert_array_equal(trace.stage("inference_start"), [1, 2])
    np.testing.assert_array_equal(trace.stage("inference_end"), [5, 6])
    assert (trace.stage("window_cut") == MISSING).all()


def _write_npz(path, **arrays):
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def test_bad_trace_files_are_format_errors(tmp_path):
    with pytest.raises(FormatError, match="no such trace file"):
        load_trace(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(FormatError, match="not a spikereveal trace"):
        load_trace(tmp_path / "text.npz")
    with pytest.raises(FormatError, match="missing arrays"):
        load_trace(_write_npz(tmp_path / "a.npz", stamps_ns=np.zeros((1, 8), np.int64)))
    good = synthetic_run(exposures=2).trace()
    arrays = dict(stamps_ns=good.stamps_ns, exposure_id=good.exposure_id, exposure_end_ns=good.exposure_end_ns,
                  outputs=good.outputs)
    newer = {**good.metadata, "trace_format": "spikereveal-trace/99"}
    with pytest.raises(FormatError, match="not supported"):
        load_trace(_write_npz(tmp_path / "b.npz", **arrays, metadata=np.array(json.dumps(newer))))
    renamed = {**good.metadata, "stages": ["bogus"] + list(STAGES[1:])}
    with pytest.raises(FormatError, match="unknown stages"):
        load_trace(_write_npz(tmp_path / "c.npz", **arrays, metadata=np.array(json.dumps(renamed))))
    short = {**arrays, "outputs": good.outputs[:1]}
    with pytest.raises(FormatError, match="outputs"):
        load_trace(_write_npz(tmp_path / "d.npz", **short, metadata=np.array(json.dumps(good.metadata))))


def test_trace_and_recorder_arguments_are_checked():
    with pytest.raises(ConfigError, match="capacity"):
        TraceRecorder(capacity=0)
    with pytest.raises(ConfigError, match="stamps_ns"):
        Trace(np.zeros((2, 3), np.int64), [1, 2], [0, 0], [7, 7])
    with pytest.raises(ConfigError, match="unknown stage"):
        synthetic_run(exposures=1).trace().stage("nope")


def test_null_recorder_does_nothing_and_allocates_nothing():
    assert NULL_RECORDER.enabled is False and TraceRecorder(1).enabled is True
    assert create_recorder(False) is NULL_RECORDER
    assert isinstance(create_recorder(True, 8, k=7), TraceRecorder) and create_recorder(True, 8, k=7).k == 7
    slot = NULL_RECORDER.begin(1, 2)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(10_000):
            NULL_RECORDER.mark(slot, 3, i)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 4096  # bookkeeping of the snapshots only: nothing per call
    assert len(NULL_RECORDER) == 0


def test_recorder_mark_keeps_no_memory_per_call():
    recorder = TraceRecorder(capacity=16)
    slot = recorder.begin(1, 2)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(10_000):
            recorder.mark(slot, i % len(STAGES), i)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    assert sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0) < 4096


def test_overhead_micro_benchmark_reports_per_mark_costs():
    result = measure_mark_overhead(marks=2_000, repeats=2)
    for key in ("mark_off_ns", "mark_on_ns", "per_exposure_off_us", "per_exposure_on_us"):
        assert isinstance(result[key], float) and np.isfinite(result[key]) and result[key] >= 0, key
    assert result["stages"] == len(STAGES)
    assert tracing_cost_fraction(3.0, 1.0, 40.0) == pytest.approx(2.0 / 40_000)
    with pytest.raises(ConfigError):
        tracing_cost_fraction(1.0, 1.0, 0.0)


# ---- report ---------------------------------------------------------------------------------------------------

def test_report_figures_follow_the_manual_clock():
    exposures, dropped = 30, (10,)
    report = build_report(synthetic_run(exposures, dropped=dropped).trace(
        counters={"gaps": 2, "skipped_by_reason": {"late": 1}}), warmup=WARMUP)
    validate_report(report)
    assert report["schema_version"] == SCHEMA_VERSION and report["percentile_method"] == "nearest-rank"
    assert report["exposures"] == {"traced": exposures, "warmup_excluded": WARMUP, "measured": exposures - WARMUP,
                                   "published": exposures - WARMUP - 1}
    measured = [i for i in range(WARMUP, exposures) if i not in dropped]
    stages = report["stages"]
    assert set(stages) == {"exposure_delivery"} | {name for name, _, _ in SPANS}
    inference_ms = np.array([inference_ns(i) for i in measured]) / MS
    expected = latency_stats(inference_ms)
    for key in ("count", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms"):
        assert stages["inference"][key] == pytest.approx(expected[key]), key
    assert stages["inference"]["from"] == "inference_start" and stages["inference"]["to"] == "inference_end"
    assert stages["window_cut"]["count"] == exposures - WARMUP  # the dropped exposure was still cut
    assert stages["exposure_delivery"]["p99_ms"] == pytest.approx(DELIVERY_NS / MS)
    assert stages["preprocess"]["max_ms"] == pytest.approx(PREPROCESS_NS / MS)
    assert stages["publish"]["p50_ms"] == pytest.approx(PUBLISH_NS / MS)
    assert stages["sync_wait"]["max_ms"] == pytest.approx((max(map(spike_lag_ns, measured)) + 10_000) / MS)
    assert stages["exposure_wait"]["max_ms"] == pytest.approx(10_000 / MS)

    e2e = report["end_to_end"]
    assert e2e["origin"] == "exposure_end"
    last_ms = np.array([e2e_last_ns(i) for i in measured]) / MS
    assert e2e["p99_ms"] == pytest.approx(latency_stats(last_ms)["p99_ms"])
    assert e2e["first_output"]["max_ms"] == pytest.approx(last_ms.max() - PUBLISH_NS / MS)
    non_inference = latency_stats(last_ms - inference_ms)["p99_ms"]
    assert report["e2e_less_inference_p99_ms"] == pytest.approx(non_inference)
    assert non_inference == pytest.approx((DELIVERY_NS + 200_000 + 10_000 + CUT_NS + PREPROCESS_NS + FIRST_PUBLISH_NS
                                           + PUBLISH_NS) / MS)

    rates = report["throughput"]
    assert rates["k"] == K and rates["exposure_rate_hz"] == pytest.approx(1e9 / PERIOD_NS)
    assert rates["completions"] == len(measured)
    # one dropped exposure in the measured run: slightly below real time
    span_s = (e2e_last_ns(measured[-1]) + measured[-1] * PERIOD_NS - e2e_last_ns(measured[0])
              - measured[0] * PERIOD_NS) / 1e9
    assert rates["output_frames_per_s"] == pytest.approx(K * (len(measured) - 1) / span_s)
    assert rates["real_time_factor"] == pytest.approx(rates["output_frames_per_s"] / (K * 1e9 / PERIOD_NS))
    assert report["drops"] == {"gaps": 2, "skipped_by_reason.late": 1, "traced_not_published": 1,
                               "records_overwritten": 0}
    json.loads(json.dumps(report, allow_nan=False))  # strict JSON


def test_without_a_clock_offset_end_to_end_starts_at_the_exposure_message():
    report = build_report(synthetic_run(12, offset_known=False).trace(), warmup=0)
    validate_report(report)
    assert report["end_to_end"]["origin"] == "exposure_received"
    assert "exposure_delivery" not in report["stages"]
    assert report["end_to_end"]["min_ms"] == pytest.approx((e2e_last_ns(0) - DELIVERY_NS) / MS)


def test_warmup_counts_rows_the_ring_already_overwrote():
    recorder = synthetic_run(exposures=10, capacity=6)
    report = build_report(recorder.trace(), warmup=5)
    assert report["exposures"]["warmup_excluded"] == 1  # 4 of the 5 warm-up exposures are gone already
    assert report["drops"]["records_overwritten"] == 4
    with pytest.raises(ConfigError, match="warmup"):
        build_report(recorder.trace(), warmup=-1)


def test_report_of_a_run_where_nothing_was_published_is_valid():
    report = build_report(synthetic_run(4, dropped=(0, 1, 2, 3)).trace())
    validate_report(json.loads(json.dumps(report, allow_nan=False)))
    assert report["stages"]["inference"]["count"] == 0 and report["stages"]["inference"]["p99_ms"] is None
    assert report["e2e_less_inference_p99_ms"] is None and report["throughput"]["exposures_per_s"] is None
    assert report["drops"]["traced_not_published"] == 4
    assert "inference" in format_table(report)


def test_format_table_lists_every_stage_and_the_totals():
    report = build_report(synthetic_run(20).trace(environment={"cpu": "cpu X", "cores": 2, "engine": "ort",
                                                               "engine_precision": "fp16"}), warmup=2)
    table = format_table(report)
    for name in report["stages"]:
        assert name in table
    for text in ("e2e first output", "e2e last output", "e2e less inference", "real-time factor", "nearest-rank",
                 "cpu X", "fp16", "first 2 exposures"):
        assert text in table, text


@pytest.mark.parametrize("corrupt, match", [
    (lambda r: r.pop("drops"), "missing top-level keys"),
    (lambda r: r.update(schema_version=1), "schema_version"),
    (lambda r: r["stages"]["inference"].update(p50_ms=1e9), "does not hold"),
    (lambda r: r["stages"]["inference"].update(count=0), "null when count is 0"),
    (lambda r: r["stages"]["publish"].pop("p99_9_ms"), "lacks"),
    (lambda r: r["end_to_end"].pop("first_output"), "first_output must be an object"),
    (lambda r: r["drops"].update(gaps=-1), "drops.gaps"),
    (lambda r: r.update(stages={}), "non-empty"),
    (lambda r: r["stages"]["inference"].update(max_ms=float("nan")), "finite"),
])
def test_validator_rejects_broken_reports(corrupt, match):
    report = copy.deepcopy(build_report(synthetic_run(8).trace()))
    validate_report(report)
    corrupt(report)
    with pytest.raises(FormatError, match=match):
        validate_report(report, source="r.json")
    with pytest.raises(FormatError, match="JSON object"):
        validate_report([1, 2])


# ---- environment ---------------------------------------------------------------------------------------------

def _fake_tool(directory, name, script):
    path = directory / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_environment_without_tools_is_absent_safe(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi, nvpmodel, jetson_clocks
    monkeypatch.setattr(env_module, "Path", lambda p: tmp_path / "absent" / str(p).lstrip("/"))
    info = env_module.collect_environment(engine="ort", precision="fp32", ort_threads=1)
    assert info["gpus"] is None and "jetson" not in info
    assert info["cpu"] and info["cores"] >= 1 and info["python"]
    assert info["versions"]["numpy"] == np.__version__
    assert (info["engine"], info["engine_precision"], info["ort_threads"]) == ("ort", "fp32", 1)
    json.dumps(info)


def test_environment_reads_nvidia_smi_and_jetson_tools(monkeypatch, tmp_path):
    if os.name != "posix":
        pytest.skip("shell-script stand-ins for the vendor tools need a POSIX shell")
    _fake_tool(tmp_path, "nvidia-smi", 'echo "NVIDIA H100, 550.54, 81559 MiB"')
    _fake_tool(tmp_path, "nvpmodel", 'echo "NV Power Mode: MAXN"; echo "0"')
    _fake_tool(tmp_path, "jetson_clocks", "echo 'needs root' >&2; exit 1")
    monkeypatch.setenv("PATH", f"{tmp_path}:/bin:/usr/bin")
    info = env_module.collect_environment()
    assert info["gpus"] == [{"name": "NVIDIA H100", "driver": "550.54", "memory": "81559 MiB"}]
    assert info["jetson"]["power_mode"] == "NV Power Mode: MAXN 0"
    assert info["jetson"]["jetson_clocks"] is None  # failed (not root): recorded as unknown, no exception


# ---- power (tegrastats) -------------------------------------------------------------------------------------

ORIN_LINE = ("11-25-2026 08:00:00 RAM 2448/7620MB (lfb 6x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@729,1%@729] "
             "GR3D_FREQ 0% cpu@45.5C VDD_IN 4770mW/4700mW VDD_CPU_GPU_CV 641mW/600mW VDD_SOC 1443mW/1400mW")
JETPACK4_LINE = "RAM 1500/3964MB (lfb 4x4MB) CPU [5%@1479] GR3D_FREQ 0%@76 POM_5V_IN 3000/2900 POM_5V_GPU 400/380"


def test_parse_tegrastats_lines():
    assert parse_tegrastats_line(ORIN_LINE) == {"VDD_IN": 4770, "VDD_CPU_GPU_CV": 641, "VDD_SOC": 1443}
    assert parse_tegrastats_line(JETPACK4_LINE) == {"POM_5V_IN": 3000, "POM_5V_GPU": 400}
    assert parse_tegrastats_line("RAM 2448/7620MB SWAP 0/3810MB") == {}


def test_power_summary_energy_per_frame():
    samples = [(i * 100_000_000, {"VDD_IN": 4000 + 1000 * (i % 2), "VDD_SOC": 1000}) for i in range(11)]
    summary = power_summary(samples, start_ns=0, end_ns=1_000_000_000, frames=100)
    mean_w = np.mean([4000 + 1000 * (i % 2) for i in range(11)]) / 1e3
    assert summary["total_rail"] == "VDD_IN" and summary["mean_total_w"] == pytest.approx(mean_w)
    assert summary["energy_j"] == pytest.approx(mean_w * 1.0)
    assert summary["energy_per_frame_mj"] == pytest.approx(mean_w * 1.0 / 100 * 1e3)
    assert summary["rails_mean_mw"]["VDD_SOC"] == 1000
    window = power_summary(samples, start_ns=200_000_000, end_ns=400_000_000)
    assert window["samples"] == 3 and window["energy_per_frame_mj"] is None
    summed = power_summary([(0, {"A_RAIL": 100, "B_RAIL": 50}), (10, {"A_RAIL": 100, "B_RAIL": 50})])
    assert summed["total_rail"] == "sum of rails" and summed["mean_total_w"] == pytest.approx(0.15)
    assert power_summary([]) is None and total_rail(["POM_5V_IN", "X"]) == "POM_5V_IN"


def test_power_logger_runs_a_separate_process(tmp_path):
    if os.name != "posix":
        pytest.skip("the tegrastats stand-in is a shell script")
    output = tmp_path / "tegrastats.txt"
    output.write_text("\n".join([ORIN_LINE, "no rails here", ORIN_LINE.replace("4770mW/", "5770mW/")]) + "\n")
    _fake_tool(tmp_path, "fake-tegrastats", f"cat '{output}'")
    ticks = iter(range(0, 10**9, 10))
    power_logger = PowerLogger(command=[str(tmp_path / "fake-tegrastats")], clock_ns=lambda: next(ticks))
    assert power_logger.start()
    power_logger.wait(timeout_s=30)
    power_logger.stop()
    assert [rails["VDD_IN"] for _, rails in power_logger.samples] == [4770, 5770]
    report = build_report(synthetic_run(5).trace(), power=power_summary(power_logger.samples, frames=35))
    validate_report(report)
    assert report["power"]["mean_total_w"] == pytest.approx(5.27) and "W mean (VDD_IN)" in format_table(report)
    absent = PowerLogger(command=[str(tmp_path / "no-such-tool")])
    assert not absent.available and absent.start() is False
    with pytest.raises(ConfigError):
        PowerLogger(interval_ms=0)


# ---- compare -------------------------------------------------------------------------------------------------

A = {"rsb": {"ort": {"window_ms_p50": 100.0, "frames_per_s": 70.0, "repeats": 10}},
     "accumulate": {"speedup": 20.0}, "environment": {"cpu": "cpu A", "cores": 2}, "only_a": 1.0,
     "list": [1.0, 2.0], "flag": True}
B = {"rsb": {"ort": {"window_ms_p50": 50.0, "frames_per_s": 140.0, "repeats": 10}},
     "accumulate": {"speedup": 10.0}, "environment": {"cpu": "cpu B", "cores": 8}, "only_b": 3,
     "list": [1.0, 4.0], "flag": False}


def test_compare_rows_ratios_and_verdicts():
    result = compare_summaries(A, B)
    rows = {row["key"]: row for row in result["rows"]}
    latency = rows["rsb.ort.window_ms_p50"]
    assert latency["ratio"] == pytest.approx(0.5) and latency["better"] == "b"
    assert rows["rsb.ort.frames_per_s"]["ratio"] == pytest.approx(2.0) and rows["rsb.ort.frames_per_s"]["better"] == "b"
    assert rows["accumulate.speedup"]["better"] == "a"
    assert rows["rsb.ort.repeats"]["better"] == "same"
    assert rows["environment.cores"]["better"] is None and rows["environment.cores"]["ratio"] == 4.0
    assert rows["list[1]"]["ratio"] == 2.0
    assert "flag" not in rows  # booleans are not measurements
    assert result["only_in_a"] == ["only_a"] and result["only_in_b"] == ["only_b"]
    assert rows["only_a"]["ratio"] is None
    assert result["text_differences"] == [{"key": "environment.cpu", "a": "cpu A", "b": "cpu B"}]
    assert [row["key"] for row in compare_summaries(A, B, pattern=r"^rsb\.")["rows"]] == \
        ["rsb.ort.window_ms_p50", "rsb.ort.frames_per_s", "rsb.ort.repeats"]
    with pytest.raises(ConfigError, match="regular expression"):
        compare_summaries(A, B, pattern="(")


def test_compare_reads_pipeline_reports():
    a = build_report(synthetic_run(12).trace())
    b = build_report(synthetic_run(12, dropped=(5,)).trace())
    rows = {row["key"]: row for row in compare_summaries(a, b)["rows"]}
    assert rows["stages.inference.p99_ms"]["better"] in ("a", "b", "same")
    assert rows["drops.traced_not_published"]["a"] == 0 and rows["drops.traced_not_published"]["b"] == 1
    assert better_direction("throughput.real_time_factor") == 1 and better_direction("end_to_end.cv") == -1
    assert flatten({"a": {"b": [1, {"c": 2}]}}) == {"a.b[0]": 1, "a.b[1].c": 2}


def test_compare_tables():
    result = compare_summaries(A, B)
    table = format_compare_table(result, ("m1", "m2"))
    assert "rsb.ort.window_ms_p50" in table and "0.500" in table and "cpu A" in table
    markdown = format_compare_markdown(result, ("m1", "m2"))
    lines = markdown.splitlines()
    assert lines[0] == "| metric | m1 | m2 | B/A | better |"
    assert "| `rsb.ort.frames_per_s` | 70 | 140 | 2.000 | m2 |" in lines
    assert all(line.count("|") == 6 for line in lines[:len(result["rows"]) + 2])


def test_load_summary_errors(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        load_summary(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{\n"a": \n')
    with pytest.raises(FormatError, match="line"):
        load_summary(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(FormatError, match="object"):
        load_summary(tmp_path / "list.json")


# ---- CLI -----------------------------------------------------------------------------------------------------

@pytest.fixture
def cli(monkeypatch):
    from spikereveal import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("bench",))
    return cli


def test_cli_bench_report(cli, tmp_path, capsys):
    trace_path = synthetic_run(15).save(tmp_path / "run.npz")
    rc = cli.main(["bench", "report", str(trace_path), "--json", str(tmp_path / "out" / "report.json"),
                   "--warmup", "2"])
    assert rc == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    validate_report(report)
    assert report["exposures"]["warmup_excluded"] == 2
    assert "inference" in capsys.readouterr().out
    assert cli.main(["bench", "report", str(tmp_path / "missing.npz")]) == 2
    assert "no such trace file" in capsys.readouterr().err


def test_cli_bench_compare(cli, tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(A))
    (tmp_path / "b.json").write_text(json.dumps(B))
    rc = cli.main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                   "--markdown", str(tmp_path / "cmp.md"), "--filter", "rsb"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "rsb.ort.frames_per_s" in out and "accumulate.speedup" not in out
    assert (tmp_path / "cmp.md").read_text().startswith("| metric | a | b | B/A | better |")
    assert cli.main(["bench", "compare", str(tmp_path / "a.json"), str(tmp_path / "nope.json")]) == 2
