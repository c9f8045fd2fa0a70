"""The lite student (issue 18): architecture, deployed graph, export (fp32/int8), the ONNX MAC counter, the
student teacher and warm start, shipped-model names, and bench engines' MACs/params per model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from engines_support import assert_not_flat, assert_within_lsb, exposure_inputs  # noqa: E402
from twins import reference_sharp8  # noqa: E402
from spikereveal.bench.graph_cost import count_graph_cost  # noqa: E402
from spikereveal.engines.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from spikereveal.engines.ldn import LDN, LDNConfig, ExposureLDN, count_parameters  # noqa: E402
from spikereveal.engines.runners import InputShape, RunnerOptions, create_runner  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402

LITE = LDNConfig(variant="lite", spike_norm="firing-gain")
FUSED = LDNConfig(variant="lite-fused", spike_norm="firing-gain")
#: both sequence students: every architecture test runs on each
LITES = pytest.mark.parametrize("config", [LITE, FUSED], ids=["lite", "lite-fused"])
#: the standard ops TensorRT 10.3+ parses (and ONNX Runtime runs); the lite graph must use nothing else
STANDARD_OPS = {"Conv", "Relu", "DepthToSpace", "Add", "Mul", "Div", "Sub", "Cast", "Transpose", "Concat", "Sigmoid",
                "ReduceMean", "ReduceMax", "Clip", "Floor", "Expand", "Constant", "Shape", "Gather", "Unsqueeze",
                "Reshape", "Slice", "Min", "Max", "ConstantOfShape", "Reciprocal", "Squeeze", "Where", "Equal",
                "QuantizeLinear", "DequantizeLinear", "Identity", "MatMul", "Pow", "Sqrt", "ReduceSum"}


def _trained_like_lite(seed: int = 0, config: LDNConfig = LITE) -> LDN:
    """A lite LDN with all weights random (a fresh one is the identity on B: zero residual)."""
    torch.manual_seed(seed)
    model = LDN(config).eval()
    with torch.no_grad():
        for parameter in model.to_rgb.parameters():
            parameter.normal_(0.0, 0.05)
    return model


def test_paper_variant_is_unchanged_and_keeps_its_config_dict():
    model = LDN()
    assert count_parameters(model) == 234_158
    assert LDNConfig().to_dict() == {"spike_frames": 21, "spike_norm": "none"}  # no 'variant' key: old files
    assert LDNConfig.from_dict({"spike_frames": 21, "spike_norm": "none"}).variant == "paper"
    names = list(model.state_dict())
    assert names[:4] == ["blur_enc.0.weight", "blur_enc.0.bias", "blur_enc2.0.weight", "blur_enc2.0.bias"]
    assert "pred.weight" in names and not any(name.startswith(("trunk", "up1", "to_rgb")) for name in names)


@LITES
def test_lite_config_round_trip_and_validation(config):
    assert config.to_dict()["variant"] == config.variant
    assert LDNConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="variant"):
        LDNConfig(variant="huge")


@pytest.mark.parametrize("config, params", [(LITE, 45_730), (FUSED, 32_514)], ids=["lite", "lite-fused"])
def test_lite_is_smaller_and_starts_as_the_identity_on_the_blurry_frame(config, params):
    model = LDN(config).eval()
    assert count_parameters(model) == params
    blur = torch.rand(2, 3, 16, 24)
    spikes = (torch.rand(2, 21, 4, 6) < 0.3).float()
    with torch.no_grad():
        torch.testing.assert_close(model(blur, spikes), blur)


@LITES
@pytest.mark.parametrize("seed", [0, 1])
def test_lite_deployed_graph_is_the_network_with_8_bit_edges(seed, config):
    model = _trained_like_lite(seed, config)
    shape = InputShape(k=5, height=16, width=24)
    image, spikes = exposure_inputs(shape, seed, spike_rate=0.3)
    expected = reference_sharp8(model, image, spikes)
    assert_not_flat(expected)
    with torch.no_grad():
        deployed = ExposureLDN(model)(torch.from_numpy(image), torch.from_numpy(spikes)).numpy()
    assert_within_lsb(deployed, expected, max_lsb=1, max_fraction=1e-3)


@LITES
def test_lite_forward_exposure_equals_one_frame_at_a_time(config):
    model = _trained_like_lite(config=config)
    blur = torch.rand(1, 3, 16, 24)
    spikes = (torch.rand(4, 21, 4, 6) < 0.3).float()
    with torch.no_grad():
        batch = model.forward_exposure(blur, spikes)
        single = torch.cat([model(blur, spikes[i:i + 1], torch.ones(())) for i in range(4)])
        batch_fixed = model(blur.expand(4, -1, -1, -1), spikes, torch.ones(()))
    assert batch.shape == (4, 3, 16, 24)
    torch.testing.assert_close(batch_fixed, single, rtol=1e-5, atol=1e-6)


@LITES
def test_lite_exports_to_standard_ops_and_runs_in_ort_fp32_and_int8(tmp_path, config):
    from spikereveal.engines.export import ExportConfig, export_ldn
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    model = _trained_like_lite(config=config)
    shape = InputShape(k=3, height=64, width=96)
    image, spikes = exposure_inputs(shape, 0, spike_rate=0.2)
    expected = reference_sharp8(model, image, spikes)
    fp32 = export_ldn(model, tmp_path / "lite.onnx", ExportConfig(k=3, height=64, width=96))
    graph_ops = {node.op_type for node in onnx.load(str(fp32)).graph.node}
    assert graph_ops <= STANDARD_OPS, graph_ops - STANDARD_OPS
    assert "DepthToSpace" in graph_ops and "ConvTranspose" not in graph_ops
    assert f'"variant": "{config.variant}"' in read_onnx_metadata(fp32)["network_config"]
    with create_runner("ort", shape, onnx_path=fp32, options=RunnerOptions(threads=1)) as runner:
        assert_within_lsb(runner.infer(image, spikes), expected, max_lsb=1, max_fraction=1e-3)
    windows = [exposure_inputs(shape, seed, spike_rate=0.2) for seed in range(4)]
    int8 = export_ldn(model, tmp_path / "lite_int8.onnx", ExportConfig(precision="int8", k=3, height=64, width=96,
                                                                       calibration_windows=4), calibration=windows)
    assert {node.op_type for node in onnx.load(str(int8)).graph.node} <= STANDARD_OPS
    with create_runner("ort", shape, onnx_path=int8, precision="int8", options=RunnerOptions(threads=1)) as runner:
        out = runner.infer(image, spikes)
    error = np.abs(out.astype(float) - expected.astype(float))
    assert error.mean() < 4.0  # a quantised graph of the same network, not another function


def _torch_macs(model: LDN, shape: InputShape) -> int:
    """Independent count: forward hooks on every conv module of the deployed graph (the MAC counter's check)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.ConvTranspose2d):
            total += inputs[0].numel() * module.out_channels // module.groups * int(np.prod(module.kernel_size))
        else:
            total += output.numel() * module.in_channels // module.groups * int(np.prod(module.kernel_size))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    image, spikes = exposure_inputs(shape, 0)
    with torch.no_grad():
        ExposureLDN(model)(torch.from_numpy(image), torch.from_numpy(spikes))
    for handle in handles:
        handle.remove()
    if model.config.variant == "paper":  # the split head runs as F.conv2d, no module: 1x1, 3+16 -> 3 channels
        total += (1 * 3 * 3 + shape.k * 16 * 3) * shape.height * shape.width
    return total


@pytest.mark.parametrize("variant", ["paper", "lite", "lite-fused"])
def test_graph_cost_counts_the_networks_multiply_adds_and_parameters(tmp_path, variant):
    from spikereveal.engines.export import ExportConfig, export_ldn

    model = LDN(LDNConfig(variant=variant)).eval()
    shape = InputShape(k=3, height=64, width=96)
    path = export_ldn(model, tmp_path / "m.onnx", ExportConfig(k=3, height=64, width=96, subpixel_decoder=False))
    cost = count_graph_cost(path)
    assert cost.params == count_parameters(model)
    assert cost.macs == _torch_macs(model, shape)
    assert set(cost.macs_by_op) == ({"Conv", "ConvTranspose"} if variant == "paper" else {"Conv"})


def test_lite_has_at_least_4x_fewer_macs_per_frame_at_the_gopro_geometry(tmp_path):
    from spikereveal.engines.export import ExportConfig, export_ldn

    per_frame = {}
    for variant in ("paper", "lite", "lite-fused"):
        path = export_ldn(LDN(LDNConfig(variant=variant)).eval(), tmp_path / f"{variant}.onnx",
                          ExportConfig(k=7, height=720, width=1280, subpixel_decoder=False))
        per_frame[variant] = count_graph_cost(path).per_frame(7)
    assert per_frame["paper"] == pytest.approx(15.03e9, rel=0.01)  # SPEC §3: 15.9 GMAC, the encoder of B once per 7
    assert per_frame["paper"] / per_frame["lite"] >= 4.0
    assert per_frame["lite-fused"] < per_frame["lite"]  # no 64-channel map at H/4


def test_graph_cost_refuses_dynamic_shapes(tmp_path):
    from spikereveal.engines.export import ExportConfig, export_ldn

    path = export_ldn(LDN(LITE).eval(), tmp_path / "dyn.onnx", ExportConfig(dynamic=True))
    with pytest.raises(ConfigError, match="static export"):
        count_graph_cost(path)


def test_graph_cost_of_a_hand_built_graph():
    """Gemm, MatMul and a grouped Conv in a three-node graph, against the formulas."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.zeros((8, 2, 3, 3), np.float32), "w")  # 8 out, groups 2, 4 in
    gemm_b = numpy_helper.from_array(np.zeros((10, 5), np.float32), "b")
    mat = numpy_helper.from_array(np.zeros((5, 7), np.float32), "m")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1]),
             helper.make_node("Gemm", ["a", "b"], ["g"]),
             helper.make_node("MatMul", ["g", "m"], ["z"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6]),
                     helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight, gemm_b, mat])
    cost = count_graph_cost(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert cost.macs_by_op == {"Conv": 1 * 8 * 6 * 6 * 2 * 9, "Gemm": 3 * 5 * 10, "MatMul": 3 * 7 * 5}
    assert cost.params == 8 * 2 * 9 + 10 * 5 + 5 * 7


def test_warm_start_copies_the_shared_tensors_only():
    from spikereveal.training.train import warm_start

    torch.manual_seed(0)
    paper = LDN(LDNConfig(spike_norm="firing-gain"))
    lite = LDN(LITE)
    copied = warm_start(lite, paper)
    assert set(copied) == {name for name in lite.state_dict() if name.startswith(
        ("blur_enc", "spike_enc", "ca.", "sa."))}
    torch.testing.assert_close(lite.spike_enc[0].weight, paper.spike_enc[0].weight)


def test_train_lite_from_a_paper_init_with_the_student_teacher(tmp_path):
    from training_support import simulate_tiny

    from spikereveal.training.train import TrainConfig, train

    recording = simulate_tiny(tmp_path / "rec", seed=3)
    init = tmp_path / "paper.pt"
    torch.manual_seed(0)
    paper = LDN(LDNConfig(spike_norm="firing-gain"))
    save_checkpoint(init, "ldn", paper, paper.config)
    config = TrainConfig("ldn", epochs=1, crop=4, batch_size=2, samples_per_epoch=2, teacher_ldn=str(init),
                         init=str(init), variant="lite", reblur_timestamps=9, reblur_gradient="distilled")
    assert config.with_defaults().teacher == "ldn"
    result = train([recording], tmp_path / "lite.pt", config, options=_options(tmp_path))
    model, meta = load_checkpoint(tmp_path / "lite.pt", expected_kind="ldn")
    assert result.finished and model.config == LITE
    assert "spike_enc.0.weight" in meta["training"]["init"]["warm_start"]
    assert list((tmp_path / "cache").glob("teacher-ldn-*.onnx")), "the teacher student is exported once, by the cache"


def _options(tmp_path):
    from spikereveal.training.train_config import RunOptions

    return RunOptions(threads=1, cache_dir=str(tmp_path / "cache"))


def test_student_teacher_targets_are_the_deployed_students_frames(tmp_path):
    from training_support import simulate_tiny

    from spikereveal.engines.export import ExportConfig, export_ldn
    from spikereveal.training import datasets as ds

    recording = simulate_tiny(tmp_path / "rec", seed=4, exposures=1)
    exposure = ds.load_exposures([recording], k=5)[0]
    model = _trained_like_lite()
    onnx_path = export_ldn(model, tmp_path / "t.onnx", ExportConfig(dynamic=True))
    centers = ds.evenly_spread_centers(exposure.window, 3)
    targets = ds.student_teacher(onnx_path, threads=1)(exposure, centers)
    image = np.rint(exposure.blurry * 255).astype(np.uint8).transpose(1, 2, 0)[None]
    spikes = (exposure.ldn_inputs(centers) * 255).astype(np.uint8)
    expected = reference_sharp8(model, image, spikes).transpose(0, 3, 1, 2) / 255.0
    assert targets.shape == (3,) + exposure.blurry.shape
    assert np.abs(targets - expected).max() <= 1 / 255 + 1e-6


def test_a_missing_student_teacher_or_init_is_named_by_its_option(tiny_recording, tmp_path):
    from cli_support import run_cli

    recording = tiny_recording(seed=1, exposures=2)
    common = ["train", "ldn", "--data", str(recording), "--out", str(tmp_path / "s.pt"), "--epochs", "1"]
    for option, extra in (("--teacher-ldn", []), ("--init", ["--teacher", "sdm"])):
        result = run_cli(*common, *extra, option, str(tmp_path / "missing.pt"))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"missing.pt does not exist; pass an LDN checkpoint with {option}, or a shipped model's name" \
            in result.stderr, result.stderr
    assert not (tmp_path / "s.pt").exists()


def test_train_config_checks_the_student_teacher_and_variant():
    from spikereveal.training.train_config import TrainConfig

    with pytest.raises(ConfigError, match="--teacher-ldn"):
        TrainConfig("ldn", teacher="ldn")
    with pytest.raises(ConfigError, match="variant"):
        TrainConfig("ldn", variant="huge")
    with pytest.raises(ConfigError, match="only apply to training the ldn"):
        TrainConfig("sr", variant="lite")


def test_model_names_resolve_to_shipped_models(tmp_path, monkeypatch):
    from spikereveal.engines import export

    assert export.resolve_model_path("default") == export.default_model_path()
    monkeypatch.setitem(export.SHIPPED_MODELS, "missing", ("models/ldn_missing.pt", "models/ldn_missing.onnx"))
    with pytest.raises(ConfigError, match="'missing' is not installed"):
        export.resolve_model_path("missing")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lite").mkdir()  # a folder of that name (e.g. a training run's) does not hide the shipped model
    if export.shipped_model_path("lite") is not None:
        assert export.resolve_model_path("lite") == export.shipped_model_path("lite")
    (tmp_path / "default").write_bytes(b"x")  # an existing file of that name is taken as a path
    assert export.resolve_model_path("default").resolve() == (tmp_path / "default").resolve()
    with pytest.raises(ConfigError, match="default, lite"):
        export.resolve_model_path(tmp_path / "nothing.pt")
    assert export.shipped_onnx_for(export.default_model_path()) == export.default_onnx_path()
    assert export.shipped_onnx_for(tmp_path / "default") is None


def test_bench_engines_reports_macs_and_params_per_model(tmp_path):
    from spikereveal.bench.engines import bench_engines, format_table

    paths = []
    for name, config in (("paper", LDNConfig()), ("lite", LITE)):
        model = LDN(config)
        paths.append(save_checkpoint(tmp_path / f"{name}.pt", "ldn", model, model.config))
    results = bench_engines(runners=("ort",), geometries=((32, 48),), repeats=1, warmup=0, k=2, threads=1,
                            work_dir=tmp_path, models=paths)
    table = results["32x48"]
    assert set(table) == {"paper/ort", "lite/ort"}
    assert table["paper/ort"]["params"] == 234_158 and table["lite/ort"]["params"] == 45_730
    assert table["paper/ort"]["macs_per_frame"] / table["lite/ort"]["macs_per_frame"] > 4
    assert results["environment"]["models"]["lite"]["variant"] == "lite"
    text = format_table(results)
    assert "lite/ort" in text and "faster per window (median) than paper/ort" in text
    assert "x fewer MACs per frame" in text


def test_shipped_lite_student_is_installed_and_its_onnx_is_its_export():
    """core/models/ldn_lite.pt (a trained lite-fused student) and ldn_lite.onnx, its fp32 export with dynamic shapes.
    When stale: ``spikereveal export --model core/models/ldn_lite.pt --out core/models/ldn_lite.onnx --dynamic --force``"""
    from spikereveal.engines.cache import file_sha256
    from spikereveal.engines.export import resolve_model_path, shipped_onnx_for
    from spikereveal.engines.onnx_metadata import read_onnx_metadata

    checkpoint = resolve_model_path("lite")
    model, meta = load_checkpoint(checkpoint, expected_kind="ldn")
    assert model.config.variant == "lite-fused" and count_parameters(model) == 32_514
    training = meta["training"]
    assert training["finished"] and training["config"]["teacher"] == "ldn"
    init = training["init"]  # fine-tuned from an earlier lite student, which was warm-started from the default's encoders
    while init is not None and "warm_start" not in init:
        init = init.get("init")
    assert init is not None and init["warm_start"]
    onnx_path = shipped_onnx_for(checkpoint)
    assert onnx_path is not None and onnx_path.name == "ldn_lite.onnx"
    onnx_meta = read_onnx_metadata(onnx_path)
    assert onnx_meta["source_sha256"] == file_sha256(checkpoint) and onnx_meta["precision"] == "fp32"
    assert (onnx_meta["batch"], onnx_meta["height"], onnx_meta["width"]) == ("dynamic",) * 3
    shape = InputShape(k=3, height=64, width=96)
    image, spikes = exposure_inputs(shape, 0, spike_rate=0.2)
    expected = reference_sharp8(model, image, spikes)
    assert_not_flat(expected)
    with create_runner("ort", shape, onnx_path=onnx_path, options=RunnerOptions(threads=1)) as runner:
        assert_within_lsb(runner.infer(image, spikes), expected, max_lsb=1, max_fraction=1e-3)


def test_ort_choice_of_a_shipped_model_runs_its_shipped_export(tmp_path):
    from spikereveal.engines.choice import EngineChoice, prepare_runner
    from spikereveal.engines.export import shipped_onnx_for, resolve_model_path

    shape = InputShape(k=2, height=32, width=48)
    runner = prepare_runner(EngineChoice(engine="ort", model="lite"), shape, tmp_path)
    assert str(runner.onnx_path) == str(shipped_onnx_for(resolve_model_path("lite")))
    assert not (tmp_path / "onnx").exists()  # nothing exported


def test_tradeoff_points_and_plot_from_reports(tmp_path):
    import json

    from spikereveal.bench.tradeoff import format_points, parse_eval_spec, tradeoff_points

    engines = {"gopro": {"default/ort": {"window_ms_p50": 700.0, "macs_per_frame": 15e9},
                         "lite/ort": {"window_ms_p50": 140.0, "macs_per_frame": 2e9}},
               "environment": {"k": 7}}
    (tmp_path / "e.json").write_text(json.dumps(engines))
    for name, psnr in (("d1", 23.0), ("d2", 25.0), ("l1", 22.5)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"methods": {"student": {"psnr": psnr, "ssim": 0.7}}}))
    evals = dict([parse_eval_spec(f"default={tmp_path / 'd1.json'},{tmp_path / 'd2.json'}"),
                  parse_eval_spec(f"lite={tmp_path / 'l1.json'}")])
    points = tradeoff_points(tmp_path / "e.json", evals)
    assert [(p.model, p.ms_per_frame, p.psnr, p.families) for p in points] == [
        ("default", 100.0, 24.0, 2), ("lite", 20.0, 22.5, 1)]
    assert "lite" in format_points(points)
    with pytest.raises(ConfigError, match="no official/ort entry"):
        tradeoff_points(tmp_path / "e.json", {"official": [tmp_path / "d1.json"], "lite": [tmp_path / "l1.json"]})
    with pytest.raises(ConfigError, match="NAME=REPORT"):
        parse_eval_spec("lite")
    pytest.importorskip("matplotlib")
    from spikereveal.bench.plots import plot_speed_quality

    assert plot_speed_quality(points, tmp_path / "t.png").stat().st_size > 1000


def test_train_cli_maps_the_lite_options():
    import argparse

    from spikereveal.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    args = parser.parse_args(["train", "ldn", "--data", "rec", "--out", "x.pt", "--teacher-ldn", "default",
                              "--init", "default", "--variant", "lite"])
    config = train_command._config(args)
    assert (config.teacher, config.teacher_ldn, config.variant, config.init) == ("ldn", "default", "lite", "default")
