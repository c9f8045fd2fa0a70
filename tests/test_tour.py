"""A scripted tour of every verb with bad input, as a user's first hour goes (issue 15).

Each step runs the installed console script with a missing file, an output path that cannot be created or a
corrupt file, and expects exit code 2, one message on stderr and no traceback. Every step fails before any
real work, so the whole tour takes seconds (the steps run two at a time); it is part of the normal suite.
Missing torch, missing data for eval/train and corrupt ONNX files in more detail: test_cli_errors.py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from cli_support import assert_user_error, run_cli
from training_support import simulate_tiny

pytestmark = pytest.mark.tour

# (id, argv, fragments of the message). Placeholders: {rec} a good recording, {broken} a recording with a
# corrupt meta.json, {missing} a path that does not exist, {file} an existing plain file, {tmp} a fresh
# folder, {onnx} a corrupt .onnx file, {pt} a corrupt checkpoint, {npz} a corrupt trace, {json} corrupt JSON.
TOUR = [
    # demo and simulate
    ("demo-out-under-a-file", ["demo", "--out", "{file}/demo"], ["argument --out:", "is a file"]),
    ("demo-missing-model", ["demo", "--model", "{missing}.pt", "--out", "{tmp}/demo"], ["{missing}.pt", "--model"]),
    ("simulate-missing-images", ["simulate", "--preset", "tiny", "--images", "{missing}", "--out", "{tmp}/sim"],
     ["{missing}"]),
    ("simulate-out-under-a-file", ["simulate", "--preset", "tiny", "--out", "{file}/sim"], ["is a file"]),
    # deblur
    ("deblur-missing-recording", ["deblur", "--recording", "{missing}", "--out", "{tmp}/d"],
     ["{missing}: is not a recording directory"]),
    ("deblur-corrupt-recording", ["deblur", "--recording", "{broken}", "--out", "{tmp}/d"], ["meta.json"]),
    ("deblur-corrupt-onnx", ["deblur", "--recording", "{rec}", "--out", "{tmp}/d", "--onnx", "{onnx}"],
     ["{onnx}: is not a readable ONNX model"]),
    ("deblur-out-under-a-file", ["deblur", "--recording", "{rec}", "--out", "{file}/d"], ["argument --out:"]),
    ("deblur-corrupt-calibration", ["deblur", "--recording", "{rec}", "--out", "{tmp}/d", "--calibration",
                                    "{json}"], ["{json}"]),
    # the live pipeline
    ("serve-missing-config", ["serve", "--config", "{missing}.json"], ["{missing}.json"]),
    ("serve-corrupt-config", ["serve", "--config", "{json}"], ["{json}"]),
    ("serve-no-endpoints", ["serve"], ["--output-endpoint"]),
    ("serve-corrupt-onnx", ["serve", "--spike-endpoint", "ipc://{tmp}/s", "--rgb-endpoint", "ipc://{tmp}/r",
                            "--output-endpoint", "ipc://{tmp}/o", "--onnx", "{onnx}", "--spike-geometry", "16x24"],
     ["{onnx}: is not a readable ONNX model"]),
    ("serve-stats-under-a-file", ["serve", "--spike-endpoint", "ipc://{tmp}/s", "--rgb-endpoint", "ipc://{tmp}/r",
                                  "--output-endpoint", "ipc://{tmp}/o", "--stats-json", "{file}/c.json"],
     ["argument --stats-json:"]),
    ("replay-missing-recording", ["replay", "{missing}", "--spike-endpoint", "ipc://{tmp}/s", "--rgb-endpoint",
                                  "ipc://{tmp}/r"], ["{missing}"]),
    ("replay-corrupt-recording", ["replay", "{broken}", "--spike-endpoint", "ipc://{tmp}/s", "--rgb-endpoint",
                                  "ipc://{tmp}/r"], ["meta.json"]),
    ("worker-corrupt-onnx", ["worker", "--connect", "ipc://{tmp}/j", "--results", "ipc://{tmp}/r", "--onnx",
                             "{onnx}", "--spike-geometry", "16x24"], ["{onnx}: is not a readable ONNX model"]),
    ("worker-missing-key", ["worker", "--connect", "tcp://127.0.0.1:1", "--results", "tcp://127.0.0.1:2",
                            "--secret-key", "{missing}.key_secret", "--server-key", "{missing}.key"],
     ["{missing}.key_secret does not exist", "spikereveal keys generate"]),
    ("keys-out-under-a-file", ["keys", "generate", "--out", "{file}/keys"], ["argument --out:", "is a file"]),
    # training, scoring and models (a step that gets past argparse imports torch: only the corrupt files do)
    ("train-out-under-a-file", ["train", "sr", "--data", "{rec}", "--out", "{file}/sr.pt"], ["argument --out:"]),
    ("eval-json-under-a-file", ["eval", "--data", "{rec}", "--json", "{file}/e.json"], ["argument --json:"]),
    ("adapt-out-under-a-file", ["adapt", "--data", "{rec}", "--out", "{file}/a"], ["argument --out:"]),
    ("import-weights-corrupt", ["import-weights", "{pt}", "--out", "{tmp}/ldn.pt"], ["{pt}"]),
    ("interpolate-weights-corrupt", ["interpolate-weights", "{pt}", "default", "--alpha", "0.5", "--out",
                                     "{tmp}/ldn.pt"], ["{pt}"]),
    ("export-corrupt-model", ["export", "--model", "{pt}", "--out", "{tmp}/ldn.onnx", "--height", "64", "--width",
                              "96"], ["{pt}", "not a PyTorch checkpoint"]),
    ("build-engine-corrupt-onnx", ["build-engine", "{onnx}", "--out", "{tmp}/ldn.plan"],
     ["{onnx}: is not a readable ONNX model"]),
    ("build-engine-missing-onnx", ["build-engine", "{missing}.onnx", "--out", "{tmp}/ldn.plan"], ["{missing}.onnx"]),
    # calibration
    ("calibrate-geometry-missing", ["calibrate", "geometry", "--recording", "{missing}"], ["{missing}"]),
    ("calibrate-time-corrupt", ["calibrate", "time", "--recording", "{broken}"], ["meta.json"]),
    ("calibrate-dark-missing-dark", ["calibrate", "dark", "--recording", "{rec}", "--dark", "{missing}"],
     ["{missing}"]),
    ("calibrate-out-under-a-file", ["calibrate", "dark", "--recording", "{rec}", "--out", "{file}/c.json"],
     ["argument --out:"]),
    # benchmarks
    ("bench-report-missing", ["bench", "report", "{missing}.npz"], ["{missing}.npz"]),
    ("bench-report-corrupt", ["bench", "report", "{npz}"], ["{npz}"]),
    ("bench-compare-corrupt", ["bench", "compare", "{json}", "{missing}.json"], ["json"]),
    ("bench-kernels-json-under-a-file", ["bench", "kernels", "--json", "{file}/k.json"], ["argument --json:"]),
    ("bench-transport-json-under-a-file", ["bench", "transport", "--json", "{file}/t.json"], ["argument --json:"]),
    ("bench-pipeline-missing-recording", ["bench", "pipeline", "--recording", "{missing}", "--json", "{tmp}/p.json",
                                          "--pass-through"], ["{missing}"]),
    ("bench-exposure-path-json-under-a-file", ["bench", "exposure-path", "--json", "{file}/x.json"],
     ["argument --json:"]),
    ("bench-all-out-under-a-file", ["bench", "all", "--out", "{file}/all"], ["argument --out:"]),
]

# steps that need torch to get to the corrupt file they name (a separate test, skipped without torch)
NEEDS_TORCH = {"import-weights-corrupt", "interpolate-weights-corrupt", "export-corrupt-model"}


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("tour")
    rec = simulate_tiny(root / "rec", seed=4, exposures=2)
    broken = root / "broken"
    simulate_tiny(broken, seed=5, exposures=2)
    (broken / "meta.json").write_text('{"format": "spikereveal-recording", "version": 1, "spike": {')
    (root / "afile").write_text("a file, not a folder\n")
    (root / "garbage.onnx").write_bytes(bytes(range(251, 0, -1)) * 8)
    (root / "garbage.pt").write_bytes(bytes(range(3, 250)) * 8)
    (root / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "garbage.json").write_text('{"format": "spikereveal-serve", "endpoints": ')
    return {"rec": rec, "broken": broken, "missing": root / "missing", "file": root / "afile",
            "onnx": root / "garbage.onnx", "pt": root / "garbage.pt", "npz": root / "garbage.npz",
            "json": root / "garbage.json", "root": root}


def test_every_verb_appears_in_the_tour():
    from spikereveal.cli import COMMAND_MODULES

    toured = {argv[0] for _, argv, _ in TOUR}
    assert toured == {name.replace("_", "-") for name in COMMAND_MODULES}
    bench = {argv[1] for _, argv, _ in TOUR if argv[0] == "bench"}
    assert bench >= {"report", "compare", "kernels", "transport", "pipeline", "exposure-path", "all"}


def _tour(places, wanted) -> None:
    """Run the TOUR steps for which ``wanted(name)`` holds, two at a time, and check each one's message."""
    def step(index_and_case):
        index, (name, argv, fragments) = index_and_case
        tmp = places["root"] / f"step{index:02d}"
        tmp.mkdir()
        values = {key: str(value) for key, value in places.items()} | {"tmp": str(tmp)}
        args = [arg.format(**values) for arg in argv]
        return name, run_cli(*args, cwd=tmp, timeout=120), [f.format(**values) for f in fragments]

    failures = []
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        for name, result, fragments in pool.map(step, [case for case in enumerate(TOUR) if wanted(case[1][0])]):
            try:
                assert_user_error(result, *fragments)
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
    assert not failures, "\n\n".join(failures)


def test_tour_of_bad_input(places):
    _tour(places, lambda name: name not in NEEDS_TORCH)


@pytest.mark.requires_torch
def test_tour_of_corrupt_checkpoints(places):
    """The steps that read a corrupt checkpoint get as far as torch (without it they name the extra instead)."""
    _tour(places, lambda name: name in NEEDS_TORCH)


def test_the_tour_leaves_the_plain_file_alone(places):
    assert places["file"].read_text() == "a file, not a folder\n"  # no output was written over it or under it
