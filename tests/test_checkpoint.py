"""Checkpoint format: round trips, every refusal, the official-weights importer and its CLI verb."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch: the [train] extra")

from spikereveal import cli  # noqa: E402
from spikereveal.engines.checkpoint import (  # noqa: E402
    CHECKPOINT_FORMAT,
    CheckpointError,
    import_official_ldn,
    load_checkpoint,
    read_official_ldn,
    save_checkpoint,
)
from spikereveal.engines.ldn import LDN, LDNConfig  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.training.bsn import BSN, BSNConfig  # noqa: E402
from spikereveal.training.sr import SR, SRConfig  # noqa: E402

NETWORKS = {
    "ldn": (LDN, LDNConfig(spike_frames=5), lambda: (torch.rand(1, 3, 8, 12), torch.rand(1, 5, 2, 3))),
    "bsn": (BSN, BSNConfig(encoder_channels=4, decoder_channels=6), lambda: (torch.rand(1, 1, 8, 8),)),
    "sr": (SR, SRConfig(residual_blocks=1, features=4), lambda: (torch.rand(1, 1, 3, 5),)),
}


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_round_trip_restores_weights_config_and_provenance(tmp_path, kind):
    model_class, config, make_inputs = NETWORKS[kind]
    torch.manual_seed(0)
    model = model_class(config).eval()
    training = {"data": [tmp_path / "rec1", "rec2"], "lr": 1e-3, "epochs": 3, "seed": 7, "device": None}
    path = save_checkpoint(tmp_path / "sub" / f"{kind}.ckpt", kind, model, config, training=training,
                           source="unit test")
    loaded, meta = load_checkpoint(path, expected_kind=kind)
    assert type(loaded) is model_class and loaded.config == config and not loaded.training
    assert meta["format"] == CHECKPOINT_FORMAT and meta["version"] == 1 and meta["kind"] == kind
    assert meta["config"] == config.to_dict() and meta["source"] == "unit test"
    assert meta["training"]["data"] == [str(tmp_path / "rec1"), "rec2"] and meta["training"]["lr"] == 1e-3
    assert set(meta["software"]) == {"torch", "spikereveal", "python"}
    json.dumps(meta)  # plain data only
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    inputs = make_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), model(*inputs))


def test_config_may_be_given_as_a_dict(tmp_path):
    model = LDN(LDNConfig(9))
    save_checkpoint(tmp_path / "a.ckpt", "ldn", model, {"spike_frames": 9})
    assert load_checkpoint(tmp_path / "a.ckpt")[0].config == LDNConfig(9)


def test_save_refuses_inconsistent_arguments(tmp_path):
    with pytest.raises(ConfigError, match="unknown checkpoint kind"):
        save_checkpoint(tmp_path / "a.ckpt", "gan", LDN(), LDNConfig())
    with pytest.raises(ConfigError, match="needs a BSN"):
        save_checkpoint(tmp_path / "a.ckpt", "bsn", LDN(), LDNConfig())
    with pytest.raises(ConfigError, match="differs"):
        save_checkpoint(tmp_path / "a.ckpt", "ldn", LDN(), LDNConfig(spike_frames=9))
    assert not list(tmp_path.iterdir())


def test_wrong_kind_names_both_kinds(tmp_path):
    save_checkpoint(tmp_path / "sr.ckpt", "sr", SR(SRConfig(1, 4)), SRConfig(1, 4))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "sr.ckpt", expected_kind="ldn")
    assert "'sr'" in str(info.value) and "'ldn'" in str(info.value)
    with pytest.raises(ConfigError, match="unknown checkpoint kind"):
        load_checkpoint(tmp_path / "sr.ckpt", expected_kind="student")


def test_missing_file_and_non_pytorch_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "absent.ckpt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="is a text file, not a PyTorch checkpoint; a spikereveal checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")


@pytest.mark.parametrize("name, content, found", [
    ("random.pt", bytes(range(7, 256)) * 4, "is of no format spikereveal knows"),
    ("empty.pt", b"", "is an empty file"),
    ("arrays.npz", None, "is a NumPy .npz archive"),
    ("config.json", b'{"kind": "ldn"}', "is a JSON file"),
])
def test_a_file_that_is_not_pytorch_says_what_it_is(tmp_path, name, content, found):
    import numpy as np

    path = tmp_path / name
    if content is None:
        np.savez(path, a=np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert found in message and "written by 'spikereveal train'" in message
    assert "pickled Python objects" not in message  # the old, wrong diagnosis


def test_an_onnx_file_passed_as_model_points_to_onnx(tmp_path):
    from spikereveal.engines.export import default_onnx_path

    onnx = default_onnx_path()
    with pytest.raises(CheckpointError, match=r"is an ONNX model .*run it with --onnx") as info:
        load_checkpoint(onnx)
    assert "pickled" not in str(info.value)
    with pytest.raises(CheckpointError, match="ONNX model .*official S-SDM LDN weights are expected"):
        read_official_ldn(onnx)


def test_cli_model_given_an_onnx_file_exits_2_with_what_to_do(tmp_path):
    import shutil

    from spikereveal.engines.export import default_onnx_path

    rec = tmp_path / "rec"
    script = Path(sys.executable).parent / "spikereveal"  # the installed console script
    subprocess.run([str(script), "simulate", "--preset", "tiny", "--exposures", "2", "--out", str(rec)],
                   check=True, capture_output=True)
    model = tmp_path / "model.pt"  # an ONNX file under a checkpoint's name
    shutil.copy(default_onnx_path(), model)
    result = subprocess.run([str(script), "deblur", "--recording", str(rec), "--out", str(tmp_path / "out"),
                             "--engine", "torch", "--model", str(model)], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{model}: is an ONNX model" in result.stderr and f"--onnx {model}" in result.stderr
    assert not (tmp_path / "out").exists()


def test_plain_state_dict_points_to_import_weights(tmp_path):
    torch.save(LDN().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="import-weights"):
        load_checkpoint(tmp_path / "plain.pth")


def test_pickled_module_is_refused_without_unpickling(tmp_path):
    torch.save(SR(SRConfig(1, 4)), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="state_dict"):
        load_checkpoint(tmp_path / "whole.pt")


def _tampered(tmp_path, **changes):
    model = LDN()
    save_checkpoint(tmp_path / "good.ckpt", "ldn", model, model.config)
    payload = torch.load(tmp_path / "good.ckpt", weights_only=True)
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value(payload[key]) if callable(value) else value
    torch.save(payload, tmp_path / "bad.ckpt")
    return tmp_path / "bad.ckpt"


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"version": 2}, "version 2"),
        ({"kind": "gan"}, "unknown kind 'gan'"),
        ({"state_dict": None}, "'state_dict' entry is missing"),
        ({"config": {"spike_frames": 0}}, "invalid ldn config"),
        ({"config": {"frames": 21}}, "invalid ldn config"),
        ({"format": "something-else"}, "not a spikereveal checkpoint"),
    ],
)
def test_damaged_checkpoints_are_refused(tmp_path, changes, fragment):
    with pytest.raises(CheckpointError, match=fragment.replace("(", r"\(")):
        load_checkpoint(_tampered(tmp_path, **changes))


def test_mismatching_tensors_are_all_named(tmp_path):
    def damage(state_dict):
        state_dict = dict(state_dict)
        del state_dict["pred.bias"]
        state_dict["extra.weight"] = torch.zeros(2)
        state_dict["sa.conv1.weight"] = torch.zeros(1, 2, 5, 5)
        return state_dict

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(_tampered(tmp_path, state_dict=damage))
    message = str(info.value)
    assert "missing tensors: pred.bias" in message
    assert "unexpected tensors: extra.weight" in message
    assert "sa.conv1.weight (expected [1, 2, 7, 7], found [1, 2, 5, 5])" in message


def test_engines_stay_light_and_ldn_checkpoints_do_not_import_training(tmp_path):
    save_checkpoint(tmp_path / "s.ckpt", "ldn", LDN(), LDNConfig())
    code = (
        "import sys, json\n"
        "import spikereveal.engines\n"
        "light = 'torch' not in sys.modules\n"
        "from spikereveal.engines.checkpoint import load_checkpoint\n"
        f"load_checkpoint({str(tmp_path / 's.ckpt')!r}, expected_kind='ldn')\n"
        "print(json.dumps([light, sorted(m for m in sys.modules if m.startswith('spikereveal.training'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    light, training_modules = json.loads(out)
    assert light and training_modules == []


# ---- official weights importer --------------------------------------------------------------------------

def _official_like_state_dict(seed=0):
    torch.manual_seed(seed)
    return LDN().state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 100},
        lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}},
        lambda sd: {"params": {f"_orig_mod.{k}": v for k, v in sd.items()}},
    ],
)
def test_importer_unwraps_common_wrappers(tmp_path, wrap):
    state_dict = _official_like_state_dict()
    torch.save(wrap(state_dict), tmp_path / "official.pth")
    model, source = read_official_ldn(tmp_path / "official.pth")
    assert "sha256" in source
    for name, tensor in state_dict.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_importer_refuses_foreign_state_dict_naming_tensors(tmp_path):
    torch.save(SR(SRConfig(1, 4)).state_dict(), tmp_path / "sr.pth")
    with pytest.raises(CheckpointError) as info:
        read_official_ldn(tmp_path / "sr.pth")
    message = str(info.value)
    assert "missing tensors: blur_enc.0.bias, blur_enc.0.weight" in message
    assert "unexpected tensors:" in message and "head.0.weight" in message


def test_importer_refuses_our_own_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "ours.ckpt", "ldn", LDN(), LDNConfig())
    with pytest.raises(CheckpointError, match="already a spikereveal checkpoint"):
        import_official_ldn(tmp_path / "ours.ckpt", tmp_path / "out.ckpt")


def test_importer_refuses_a_dict_without_tensors(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="holds no state dict"):
        read_official_ldn(tmp_path / "meta.pth")


def _cli(monkeypatch, argv):
    monkeypatch.setattr(cli, "COMMAND_MODULES", tuple(dict.fromkeys(cli.COMMAND_MODULES + ("import_weights",))))
    return cli.main(argv)


def test_cli_imports_and_writes_a_loadable_checkpoint(tmp_path, monkeypatch, capsys):
    state_dict = _official_like_state_dict(seed=3)
    torch.save({"state_dict": state_dict}, tmp_path / "official.pth")
    out = tmp_path / "ldn.ckpt"
    assert _cli(monkeypatch, ["import-weights", str(tmp_path / "official.pth"), "--out", str(out)]) == 0
    assert "234,158 parameters" in capsys.readouterr().out
    model, meta = load_checkpoint(out, expected_kind="ldn")
    assert torch.equal(model.pred.weight, state_dict["pred.weight"]) and "official.pth" in meta["source"]
    assert _cli(monkeypatch, ["import-weights", str(tmp_path / "official.pth"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert _cli(monkeypatch, ["import-weights", str(tmp_path / "official.pth"), "--out", str(out), "--force"]) == 0


def test_cli_refuses_a_wrong_state_dict_with_the_tensor_names(tmp_path, monkeypatch, capsys):
    state_dict = _official_like_state_dict()
    state_dict["pred.weight"] = torch.zeros(3, 35, 1, 1)  # e.g. a head for a different decoder width
    del state_dict["ca.fc.2.weight"]
    torch.save(state_dict, tmp_path / "wrong.pth")
    code = _cli(monkeypatch, ["import-weights", str(tmp_path / "wrong.pth"), "--out", str(tmp_path / "x.ckpt")])
    err = capsys.readouterr().err
    assert code == 2
    assert "spikereveal import-weights: error:" in err
    assert "missing tensors: ca.fc.2.weight" in err
    assert "pred.weight (expected [3, 19, 1, 1], found [3, 35, 1, 1])" in err
    assert not (tmp_path / "x.ckpt").exists()


def test_cli_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from spikereveal.commands import import_weights\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def _two_ldn_checkpoints(tmp_path, end_config=LDNConfig(spike_frames=5, spike_norm="firing-gain")):
    torch.manual_seed(1)
    start = LDN(LDNConfig(spike_frames=5)).eval()
    end = LDN(end_config).eval()
    return (save_checkpoint(tmp_path / "start.ckpt", "ldn", start, start.config, source="the start"),
            save_checkpoint(tmp_path / "end.ckpt", "ldn", end, end.config, training={"epochs": 2}, source="the end"),
            start, end)


def test_interpolation_blends_every_tensor_and_records_both_ends(tmp_path):
    from spikereveal.engines.checkpoint import interpolate_checkpoints, sha256_of

    start_path, end_path, start, end = _two_ldn_checkpoints(tmp_path)
    for alpha in (0.0, 0.75, 1.0):
        out = tmp_path / f"blend_{alpha}.ckpt"
        meta = interpolate_checkpoints(start_path, end_path, alpha, out)
        assert meta["kind"] == "ldn" and meta["alpha"] == alpha
        model, saved = load_checkpoint(out, expected_kind="ldn")
        for name, tensor in model.state_dict().items():
            expected = (1 - alpha) * start.state_dict()[name] + alpha * end.state_dict()[name]
            torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-7)
        assert model.config == end.config  # the end's spike_norm, not the start's
        record = saved["training"]["interpolation"]
        assert saved["training"]["epochs"] == 2 and record["alpha"] == alpha
        assert record["start"] == {"path": str(start_path), "sha256": sha256_of(start_path), "source": "the start"}
        assert record["end"]["sha256"] == sha256_of(end_path) and record["end"]["source"] == "the end"
    assert torch.equal(load_checkpoint(tmp_path / "blend_0.0.ckpt")[0].pred.weight, start.pred.weight)
    assert torch.equal(load_checkpoint(tmp_path / "blend_1.0.ckpt")[0].pred.weight, end.pred.weight)


def test_interpolation_refuses_other_networks_and_alphas(tmp_path):
    from spikereveal.engines.checkpoint import interpolate_checkpoints

    start_path, end_path, _, _ = _two_ldn_checkpoints(tmp_path / "a", LDNConfig(spike_frames=5, variant="lite"))
    with pytest.raises(CheckpointError, match="another architecture or variant.*missing tensors: blur_skip"):
        interpolate_checkpoints(start_path, end_path, 0.5, tmp_path / "x.ckpt")
    bsn = BSN(NETWORKS["bsn"][1])
    bsn_path = save_checkpoint(tmp_path / "bsn.ckpt", "bsn", bsn, bsn.config)
    with pytest.raises(ConfigError, match="cannot interpolate a bsn checkpoint"):
        interpolate_checkpoints(bsn_path, start_path, 0.5, tmp_path / "x.ckpt")
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"must be in \[0, 1\]"):
            interpolate_checkpoints(start_path, start_path, alpha, tmp_path / "x.ckpt")
    assert not (tmp_path / "x.ckpt").exists()


def test_cli_interpolate_weights(tmp_path, monkeypatch, capsys):
    start_path, end_path, _, _ = _two_ldn_checkpoints(tmp_path)
    out = tmp_path / "blend.ckpt"
    argv = ["interpolate-weights", str(start_path), str(end_path), "--alpha", "0.75", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "0.25 x start.ckpt + 0.75 x end.ckpt" in capsys.readouterr().out
    assert load_checkpoint(out)[1]["training"]["interpolation"]["alpha"] == 0.75
    assert cli.main(argv) == 2 and "--force" in capsys.readouterr().err
    assert cli.main(argv + ["--force"]) == 0
    capsys.readouterr()
    assert cli.main(["interpolate-weights", str(tmp_path / "nope.ckpt"), "default", "--alpha", "0.5",
                     "--out", str(tmp_path / "y.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "spikereveal interpolate-weights: error: checkpoint" in err and "nope.ckpt does not exist" in err
    assert not (tmp_path / "y.ckpt").exists()
