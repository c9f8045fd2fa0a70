"""The TensorRT runner against a recording stand-in of TensorRT and the CUDA runtime (``fake_trt``): no GPU.

What a first GPU would otherwise find: every create has its destroy (on success and when each create in
turn fails), the call order of a warm run and of a graph capture, copy/compute overlap through two slots
and the input-consumed event, non-blocking streams, cuda-bindings 13 (no ``cuda.cudart``, native handles
through ``get_cuda_native_handle``) and 12 (legacy module, ``int()``), the profiles and input shapes of the
geometries we ship, and the engine-cache key.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from fake_trt import FakeStack, install
from spikereveal.engines.runners import InputShape, RunnerError, RunnerOptions, create_runner
from spikereveal.errors import SpikeRevealError

SHAPE = InputShape(2, 16, 24)
FLAVOURS = ("13", "12")


@pytest.fixture
def onnx_path(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"fake onnx bytes")
    return path


def runner_for(stack, monkeypatch, onnx_path, tmp_path, shape=SHAPE, precision="fp32", **options):
    install(monkeypatch, stack, {"precision": precision, "firing_gain_range": "[0.5, 2.0]"})
    options.setdefault("warmup_runs", 0)
    opts = RunnerOptions(cache_dir=str(tmp_path / "cache"), **options)
    return create_runner("trt", shape, onnx_path=onnx_path, precision=precision, options=opts)


def exposure(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=shape.image, dtype=np.uint8)
    spikes = rng.integers(0, 256, size=shape.spikes, dtype=np.uint8)
    return image, spikes


def expected(image, spikes):
    """What the fake engine computes: sharp[k] = image[0] + spikes[k, 0, 0, 0] (mod 256)."""
    shift = spikes[:, 0, 0, 0].astype(np.uint16)[:, None, None, None]
    return ((image.astype(np.uint16) + shift) % 256).astype(np.uint8)


def assert_released(stack: FakeStack) -> None:
    """The leak check: nothing alive, no misuse (double free, freed memory used, int() under 13)."""
    leaks = stack.leaks()
    assert not leaks, f"not released: {leaks}"
    assert not stack.errors, stack.errors


# -- lifecycle ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_load_infer_close_releases_everything(flavour, cuda_graph, monkeypatch, onnx_path, tmp_path):
    stack = FakeStack(flavour)
    runner = runner_for(stack, monkeypatch, onnx_path, tmp_path, cuda_graph=cuda_graph, warmup_runs=1)
    image, spikes = exposure()
    with runner:
        assert runner.describe()["cuda_module"] == ("cuda.bindings.runtime" if flavour == "13" else "cuda.cudart")
        sharp = runner.infer(image, spikes)
        np.testing.assert_array_equal(sharp, expected(image, spikes))
        assert sharp is runner.sharp
        other = exposure(seed=1)
        assert runner.infer(*other) is sharp  # the preallocated output, overwritten
        np.testing.assert_array_equal(sharp, expected(*other))
        out = np.zeros(SHAPE.sharp, np.uint8)
        assert runner.infer(image, spikes, out=out) is out
        np.testing.assert_array_equal(out, expected(image, spikes))
        created = sorted(stack.created)
    kinds = {kind: created.count(kind) for kind in set(created)}
    assert kinds["stream"] == 2 and kinds["event"] == 12 and kinds["device"] == 6 and kinds["pinned"] == 6
    assert kinds.get("graph", 0) == kinds.get("graphExec", 0) == (2 if cuda_graph else 0)
    assert_released(stack)
    handles = stack.calls_named("get_cuda_native_handle")
    assert bool(handles) is (flavour == "13")  # 13: native handles through the utility; 12: int()
    runner.close()  # idempotent
    assert_released(stack)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_streams_are_non_blocking(flavour, monkeypatch, onnx_path, tmp_path):
    stack = FakeStack(flavour)
    with runner_for(stack, monkeypatch, onnx_path, tmp_path):
        pass
    assert stack.calls_named("cudaStreamCreateWithFlags") == [("cudaStreamCreateWithFlags", "1")] * 2
    assert not stack.calls_named("cudaStreamCreate")


def count_creates(flavour, cuda_graph, monkeypatch, onnx_path, tmp_path) -> list[str]:
    stack = FakeStack(flavour)
    with runner_for(stack, monkeypatch, onnx_path, tmp_path / "count", cuda_graph=cuda_graph, warmup_runs=1):
        pass
    return stack.created


@pytest.mark.parametrize("cuda_graph", [False, True])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_each_create_failing_in_turn_releases_all_earlier_creates(flavour, cuda_graph, monkeypatch, onnx_path,
                                                                 tmp_path):
    kinds = count_creates(flavour, cuda_graph, monkeypatch, onnx_path, tmp_path)
    assert {"trt.Runtime", "trt.ICudaEngine", "trt.IExecutionContext", "stream", "event", "device",
            "pinned"} <= set(kinds)
    for index, kind in enumerate(kinds):
        stack = FakeStack(flavour, fail_at=index)
        runner = runner_for(stack, monkeypatch, onnx_path, tmp_path / f"c{index}", cuda_graph=cuda_graph,
                            warmup_runs=1)
        with pytest.raises(SpikeRevealError) as failure:
            runner.load()
        message = str(failure.value)
        del failure  # its traceback holds frames; TensorRT objects die with it
        gc.collect()
        assert stack.created[index] == kind, (index, stack.created)
        assert not runner.loaded
        leaks, errors = stack.leaks(), stack.errors
        assert not leaks and not errors, f"create #{index} ({kind}) failed ({message}); left {leaks} {errors}"
        assert runner._slots == [] and runner._context is None and runner._engine is None


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_a_failing_execution_during_load_or_warm_up_releases_everything(cuda_graph, monkeypatch, onnx_path, tmp_path):
    stack = FakeStack("13", fail_calls=("execute_async_v3",))
    runner = runner_for(stack, monkeypatch, onnx_path, tmp_path, cuda_graph=cuda_graph, warmup_runs=1)
    with pytest.raises(RunnerError, match="execute_async_v3 failed"):
        runner.load()
    gc.collect()
    assert not runner.loaded
    assert_released(stack)


def test_the_leak_check_catches_a_leaked_resource(monkeypatch, onnx_path, tmp_path):
    """The checker can fail: a runner that forgets to destroy its graph execs is caught."""
    import spikereveal.engines.trt as trt_module

    monkeypatch.setattr(trt_module._CudaRuntime, "destroy_graph_exec", lambda self, graph_exec: None)
    stack = FakeStack("13")
    with runner_for(stack, monkeypatch, onnx_path, tmp_path, cuda_graph=True):
        pass
    assert stack.leaks() == ["graphExec0", "graphExec1"]
    with pytest.raises(AssertionError, match="graphExec0"):
        assert_released(stack)


def test_the_misuse_check_catches_int_on_a_handle_under_cuda_bindings_13(monkeypatch, onnx_path, tmp_path):
    import spikereveal.engines.trt as trt_module

    monkeypatch.setattr(trt_module, "_native_handle", lambda obj: int(obj))  # the deprecated way
    stack = FakeStack("13")
    with runner_for(stack, monkeypatch, onnx_path, tmp_path):
        pass
    assert stack.errors and all("get_cuda_native_handle" in error for error in stack.errors)


def test_a_failing_release_does_not_stop_the_others(monkeypatch, onnx_path, tmp_path):
    import spikereveal.engines.trt as trt_module

    def broken(self, event):
        raise trt_module.CudaCallError("CUDA cudaEventDestroy failed (cudaErrorInvalidResourceHandle)")

    stack = FakeStack("13")
    runner = runner_for(stack, monkeypatch, onnx_path, tmp_path)
    monkeypatch.setattr(trt_module._CudaRuntime, "destroy_event", broken)
    runner.load()
    runner.close()
    assert len(runner.release_problems) == 12 and all("cudaEvent" in p for p in runner.release_problems)
    assert {leak.rstrip("0123456789") for leak in stack.leaks()} == {"event"}  # streams, memory, TRT: gone


# -- call order --------------------------------------------------------------------------------------------
def roles(runner) -> dict[str, str]:
    """Fake labels -> role names (compute/copy stream, slot events, buffers)."""
    names = {runner._compute_stream.label: "compute", runner._copy_stream.label: "copy"}
    for slot in runner._slots:
        names.update({event.label: f"{role}{slot.index}" for role, event in slot.events.items()})
    return names


def test_warm_run_call_order(monkeypatch, onnx_path, tmp_path):
    stack = FakeStack("13")
    with runner_for(stack, monkeypatch, onnx_path, tmp_path) as runner:
        names = roles(runner)
        image, spikes = exposure()
        del stack.calls[:]
        runner.infer(image, spikes)
        device = {name: stack.memory_label(pointer) for name, pointer in runner._slots[0].device.items()}
        pinned_sharp = stack.memory_label(runner._slots[0].host["sharp"].ctypes.data)
        wanted = ("cudaStreamWaitEvent", "cudaEventRecord", "cudaMemcpyAsync", "execute_async_v3",
                  "set_input_consumed_event", "set_tensor_address", "cudaEventSynchronize", "cudaEventElapsedTime")
        calls = [tuple(names.get(part, part) for part in call) for call in stack.calls if call[0] in wanted]
    assert calls == [
        ("cudaStreamWaitEvent", "copy", "consumed0"),  # this slot's inputs were read by TensorRT
        ("cudaEventRecord", "h2d_start0", "copy"),
        ("cudaMemcpyAsync", "H2D", device["image"], "copy"),
        ("cudaMemcpyAsync", "H2D", device["spikes"], "copy"),
        ("cudaEventRecord", "h2d_done0", "copy"),
        ("cudaStreamWaitEvent", "compute", "h2d_done0"),
        ("set_tensor_address", "image", device["image"]),
        ("set_tensor_address", "spikes", device["spikes"]),
        ("set_tensor_address", "sharp", device["sharp"]),
        ("set_input_consumed_event", "consumed0"),
        ("cudaEventRecord", "compute_start0", "compute"),
        ("execute_async_v3", "compute", (device["image"], device["spikes"], device["sharp"])),
        ("cudaEventRecord", "compute_done0", "compute"),
        ("cudaMemcpyAsync", "D2H", pinned_sharp, "compute"),
        ("cudaEventRecord", "d2h_done0", "compute"),
        ("cudaEventSynchronize", "d2h_done0"),
        ("cudaEventElapsedTime", "h2d_start0", "h2d_done0"),
        ("cudaEventElapsedTime", "compute_start0", "compute_done0"),
        ("cudaEventElapsedTime", "compute_done0", "d2h_done0"),
        ("cudaEventElapsedTime", "h2d_start0", "d2h_done0"),
    ]
    assert runner.last_timings_ms == {"h2d": 0.25, "compute": 0.25, "d2h": 0.25, "gpu_total": 0.25}


def test_graph_capture_call_order_and_replay(monkeypatch, onnx_path, tmp_path):
    stack = FakeStack("13")
    with runner_for(stack, monkeypatch, onnx_path, tmp_path, cuda_graph=True) as runner:
        names = roles(runner)
        names.update({slot.graph_exec.label: f"graphExec{slot.index}" for slot in runner._slots})
        load_calls = [call for call in stack.calls if call[0] in (
            "cudaStreamBeginCapture", "cudaStreamEndCapture", "cudaGraphInstantiate", "execute_async_v3",
            "cudaStreamSynchronize", "set_input_consumed_event")]
        compute = runner._compute_stream.label
        per_slot = [
            ("execute_async_v3", compute),  # a first run outside capture (TensorRT's lazy setup)
            ("cudaStreamSynchronize", compute),
            ("cudaStreamBeginCapture", compute, "cudaStreamCaptureModeThreadLocal"),
            ("execute_async_v3", compute),
            ("cudaStreamEndCapture", compute),
            ("cudaGraphInstantiate", "graph"),
        ]
        assert [call[:3] if call[0] != "execute_async_v3" else call[:2] for call in load_calls] == [
            tuple(part if part != "graph" else f"graph{i}" for part in call) for i in range(2) for call in per_slot]
        image, spikes = exposure(seed=3)
        del stack.calls[:]
        np.testing.assert_array_equal(runner.infer(image, spikes), expected(image, spikes))  # the replay
        calls = [tuple(names.get(part, part) for part in call) for call in stack.calls
                 if call[0] != "get_cuda_native_handle"]
        assert runner.last_timings_ms == {"h2d": None, "compute": None, "d2h": None, "gpu_total": 0.25}
    assert calls == [
        ("cudaEventRecord", "compute_start0", "compute"),
        ("cudaGraphLaunch", "graphExec0", "compute"),
        ("cudaEventRecord", "d2h_done0", "compute"),
        ("cudaEventSynchronize", "d2h_done0"),
        ("cudaEventElapsedTime", "compute_start0", "d2h_done0"),
    ]
    assert not stack.calls_named("set_input_consumed_event")  # never inside a capture
    assert_released(stack)


def test_submit_overlaps_the_next_copy_with_the_current_inference(monkeypatch, onnx_path, tmp_path):
    stack = FakeStack("13")
    with runner_for(stack, monkeypatch, onnx_path, tmp_path) as runner:
        names = roles(runner)
        windows = [exposure(seed=seed) for seed in range(5)]
        del stack.calls[:]
        tickets = [runner.submit(*windows[0]), runner.submit(*windows[1])]
        with pytest.raises(RunnerError, match="in flight"):
            runner.submit(*windows[2])  # two slots
        with pytest.raises(RunnerError, match="in flight"):
            runner.infer(*windows[2])
        results = []
        for n in range(2, 5):
            first = runner.wait(tickets.pop(0))
            results.append(first.copy())
            tickets.append(runner.submit(*windows[n]))
        results += [runner.wait(ticket).copy() for ticket in tickets]
        calls = [tuple(names.get(part, part) for part in call) for call in stack.calls]
    for window, result in zip(windows, results):
        np.testing.assert_array_equal(result, expected(*window))
    # exposure 1's copy is on the copy stream before anyone waits for exposure 0
    first_sync = calls.index(("cudaEventSynchronize", "d2h_done0"))
    second_copy = calls.index(("cudaEventRecord", "h2d_done1", "copy"))
    assert second_copy < first_sync
    assert calls.count(("set_input_consumed_event", "consumed0")) == 3
    assert calls.count(("cudaStreamWaitEvent", "copy", "consumed1")) == 2
    assert_released(stack)


def test_wait_checks_its_ticket(monkeypatch, onnx_path, tmp_path):
    stack = FakeStack("12")
    with runner_for(stack, monkeypatch, onnx_path, tmp_path) as runner:
        ticket = runner.submit(*exposure())
        with pytest.raises(RunnerError, match="not in flight"):
            runner.wait(ticket + 1)
        out = np.zeros(SHAPE.sharp, np.uint8)
        assert runner.wait(ticket, out=out) is out
        with pytest.raises(RunnerError, match="not in flight"):
            runner.wait(ticket)
        assert set(runner.next_inputs()) == {"image", "spikes"}


# -- geometry, profiles, cache -----------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["gopro", "rsb"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_profiles_and_input_shapes_of_the_shipped_geometries(geometry, dynamic, monkeypatch, onnx_path, tmp_path):
    from spikereveal.bench.engines import geometry_shape

    shape = geometry_shape(geometry)
    assert shape.spikes == {"gopro": (7, 21, 180, 320), "rsb": (7, 21, 250, 400)}[geometry]
    stack = FakeStack("13", dynamic=dynamic)
    with runner_for(stack, monkeypatch, onnx_path, tmp_path, shape=shape) as runner:
        sharp = runner.sharp
        assert sharp.shape == shape.sharp
    assert stack.calls_named("profile.set_shape") == [
        ("profile.set_shape", name, dims, dims, dims) for name, dims in shape.as_dict().items()]  # one static profile
    set_shapes = stack.calls_named("set_input_shape")
    assert set_shapes == ([("set_input_shape", name, dims) for name, dims in shape.as_dict().items()]
                          if dynamic else [])
    assert_released(stack)


def test_the_shipped_export_is_dynamic_so_the_runner_sets_its_shapes():
    pytest.importorskip("onnx")
    from spikereveal.engines.export import default_onnx_path
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    path = default_onnx_path()
    if path is None:
        pytest.skip("no shipped ONNX export in this install")
    meta = read_onnx_metadata(path)
    assert (meta["batch"], meta["height"], meta["width"]) == ("dynamic",) * 3 and meta["spike_window"] == "21"


def test_a_geometry_outside_the_profile_is_a_clear_error(monkeypatch, onnx_path, tmp_path):
    stack = FakeStack("13", dynamic=True)
    runner = runner_for(stack, monkeypatch, onnx_path, tmp_path)
    runner.load()
    runner.close()
    # the cached plan for SHAPE, loaded by a runner of another shape under the same key would be refused;
    # here: an engine whose profile does not cover the request
    import spikereveal.engines.trt as trt_module

    real = trt_module.load_or_build_plan

    def other_plan(onnx, shape, precision, options):
        return real(onnx, InputShape(1, 16, 24), precision, options)

    monkeypatch.setattr(trt_module, "load_or_build_plan", other_plan)
    with pytest.raises(RunnerError, match="does not accept spikes"):
        create_runner("trt", SHAPE, onnx_path=onnx_path,
                      options=RunnerOptions(cache_dir=str(tmp_path / "cache"), warmup_runs=0)).load()
    gc.collect()
    assert_released(stack)


def test_engine_cache_key_and_reuse(monkeypatch, onnx_path, tmp_path):
    from spikereveal.bench.engines import geometry_shape

    shape = geometry_shape("gopro")
    stack = FakeStack("13", layer_format="Row major linear FP16 format")
    with runner_for(stack, monkeypatch, onnx_path, tmp_path, shape=shape, precision="fp16") as runner:
        key = runner.info["key"]
        assert runner.info["built"] is True
        assert runner.trtexec_command() == (
            f"trtexec --loadEngine={runner.info['cache']} --shapes=image:1x720x1280x3,spikes:7x21x180x320")
    assert key["tensorrt_version"] == "10.3.0" and key["gpu_name"] == "Fake GPU"
    assert key["compute_capability"] == [8, 7] and key["precision"] == "fp16"
    assert key["shapes"] == {"image": [1, 720, 1280, 3], "spikes": [7, 21, 180, 320]}
    assert len(stack.calls_named("build_serialized_network")) == 1
    with runner_for(stack, monkeypatch, onnx_path, tmp_path, shape=shape, precision="fp16") as runner:
        assert runner.info["built"] is False and runner.info["key"] == key  # from the cache
    assert len(stack.calls_named("build_serialized_network")) == 1
    newer = FakeStack("13", layer_format="Row major linear FP16 format", trt_version="11.0.0")
    with runner_for(newer, monkeypatch, onnx_path, tmp_path, shape=shape, precision="fp16") as runner:
        assert runner.info["built"] is True and runner.info["cache"] != key  # another TensorRT: another plan
    assert_released(stack)
    assert_released(newer)


# -- missing pieces ----------------------------------------------------------------------------------------
def test_without_cuda_bindings_or_device_the_reason_is_clear(monkeypatch, onnx_path, tmp_path):
    import sys

    from spikereveal.engines.trt import GpuUnavailableError, cuda_unavailable_reason

    stack = install(monkeypatch, FakeStack("13", devices=0))
    assert "cudaGetDeviceCount failed" in cuda_unavailable_reason()
    runner = create_runner("trt", SHAPE, onnx_path=onnx_path)
    with pytest.raises(GpuUnavailableError, match="needs an NVIDIA GPU"):
        runner.load()
    assert_released(stack)
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    assert "cuda-python" in cuda_unavailable_reason() and "spikereveal[trt]" in cuda_unavailable_reason()


def test_native_handle_prefers_the_utility_and_passes_ints(monkeypatch):
    from spikereveal.engines.trt import _native_handle

    stack = install(monkeypatch, FakeStack("13"))
    _, stream = stack.runtime.cudaStreamCreateWithFlags(1)
    assert _native_handle(stream) == stream.address and not stack.errors
    assert _native_handle(12345) == 12345 and _native_handle(None) == 0
    assert stream.getPtr() != stream.address  # the storage's address: never the handle
    legacy = install(monkeypatch, FakeStack("12"))
    _, stream = legacy.runtime.cudaStreamCreateWithFlags(1)
    assert _native_handle(stream) == stream.address and not legacy.errors


# -- bench engines -----------------------------------------------------------------------------------------
def test_bench_engines_reports_copies_and_compute_apart_with_the_trtexec_line(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from spikereveal.bench.engines import bench_engines, format_table

    stack = install(monkeypatch, FakeStack("13"))
    monkeypatch.setenv("SPIKEREVEAL_CACHE", str(tmp_path / "cache"))
    results = bench_engines(runners=("trt",), geometries=((16, 24),), repeats=3, warmup=1, k=2, threads=1,
                            work_dir=tmp_path)
    entry = results["16x24"]["trt"]
    assert entry["h2d_ms_p50"] == entry["compute_ms_p50"] == entry["d2h_ms_p50"] == 0.25
    assert entry["transfers_included"] is True and entry["overlapped_frames_per_s"] > 0
    assert entry["trtexec"].startswith("trtexec --loadEngine=") and "--shapes=image:1x16x24x3,spikes:2x21x4x6" in \
        entry["trtexec"]
    table = format_table(results)
    assert "GPU p50: h2d 0.25 ms, compute 0.25 ms, d2h 0.25 ms (window times include the copies)" in table
    assert "cross-check: trtexec" in table
    assert_released(stack)
