"""Data-parallel training (torchrun, gloo on CPU): the global batch split over ranks, sharded teacher
targets, rank-0-only output, resume on every rank; two real torchrun launches of ``python -m spikereveal``.

Tolerance of the DDP-vs-one-process comparison. Two ranks with B/2 crops each, each mean loss scaled by its
share of the batch and the gradients averaged by DistributedDataParallel, give the gradient of the whole
batch's mean loss: the same value as one process with batch B up to float rounding (the LDN has no
BatchNorm or other cross-sample layer; the loss is a per-crop mean). The rounding differs (two partial sums
and an all-reduce instead of one sum), ~1e-7 relative per gradient; Adam divides by the gradient's own
scale, so the weights can drift by more on nearly-zero gradients. Measured here with SETTINGS: 2.5e-6
largest weight difference after 4 steps at lr 1e-3, against up to 4e-3 that 4 Adam steps can move a weight
(the model moves 3.0e-3 from its start). The test allows 1e-4 (40x the measured drift, 1/30 of what the
run moves the weights) and checks that the run moves them by more than 10x that.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from spikereveal.engines.checkpoint import load_checkpoint
from spikereveal.errors import ConfigError
from spikereveal.training import datasets as ds
from spikereveal.training.distributed import LocalGroup, RankPlace, join, launched_by_torchrun, rank_batches
from spikereveal.training.train import RunOptions, TrainConfig, train
from training_support import simulate_tiny

WEIGHT_TOLERANCE = 1e-4
# 5 crops per epoch in steps of 4: the second step's single crop leaves rank 1 an empty share (weight 0);
# 9 re-blur timestamps with a gradient through the 5 distilled ones: two forward passes per step under DDP
SETTINGS = dict(epochs=2, crop=4, batch_size=4, samples_per_epoch=5, seed=0, teacher="sdm",
                reblur_timestamps=9, reblur_gradient="distilled")


def _cli_args(settings=SETTINGS):
    flags = []
    for name, value in settings.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return simulate_tiny(tmp_path_factory.mktemp("ddp") / "rec", seed=3, exposures=2)


def _torchrun(args, cwd, nproc=2):
    """``torchrun --standalone --nproc-per-node nproc -m spikereveal ...``; (stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "spikereveal", *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def _max_difference(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def runs(recording, tmp_path_factory):
    """One process straight through (in-process); the same run on 2 CPU processes with torchrun, stopped
    by its time limit after the first step and resumed by a second torchrun launch (two launches keep
    this file within a minute on 2 shared cores)."""
    folder = tmp_path_factory.mktemp("runs")
    train([recording], folder / "single.pt", TrainConfig("ldn", **SETTINGS), options=RunOptions(threads=1))
    common = ["train", "ldn", "--data", str(recording), "--out", "ddp.pt", "--threads", "1", "--cache-dir", "cache"]
    stopped, _ = _torchrun([*common, "--time-limit-min", "1e-9", *_cli_args()], cwd=folder)
    for name in ("ddp.pt", "ddp.pt.optim"):  # the stopped run, for a one-process resume
        (folder / f"stopped-{name}").write_bytes((folder / name).read_bytes())
    _, stopped_meta = load_checkpoint(folder / "ddp.pt")
    resumed, _ = _torchrun([*common, "--resume", "ddp.pt"], cwd=folder)
    return folder, stopped, stopped_meta, resumed


def test_two_ranks_train_the_model_of_one_process(runs):
    folder, _, stopped_meta, _ = runs
    single, single_meta = load_checkpoint(folder / "single.pt")
    ddp, ddp_meta = load_checkpoint(folder / "ddp.pt")  # every one of its 4 steps ran on 2 ranks
    torch.manual_seed(0)
    start = type(single)(single.config)  # the seeded initial weights of both runs
    assert _max_difference(single, start) > 10 * WEIGHT_TOLERANCE  # the runs moved the weights
    assert _max_difference(single, ddp) < WEIGHT_TOLERANCE
    assert ddp_meta["training"]["finished"] and ddp_meta["training"]["epochs_completed"] == 2
    # the logged loss is the whole batch's, as in one process (epoch 2 ran entirely after the resume)
    assert ddp_meta["training"]["history"][1]["loss"] == pytest.approx(single_meta["training"]["history"][1]["loss"],
                                                                       rel=1e-5)
    record = ddp_meta["training"]
    assert record["world_size"] == 2 and record["backend"] == "gloo" and record["threads"] == 1
    assert single_meta["training"]["world_size"] == 1


def test_each_rank_computes_its_share_of_the_teacher_targets_once(runs):
    folder, _, stopped_meta, _ = runs
    assert stopped_meta["training"]["teacher_targets"]["computed_per_rank"] == [1, 1]  # 2 exposures: one each
    _, resumed_meta = load_checkpoint(folder / "ddp.pt")
    assert resumed_meta["training"]["teacher_targets"]["computed_per_rank"] == [0, 0]  # the resume reads them
    assert len(list((folder / "cache").glob("teacher-*.npy"))) == 2  # the union of the two shards
    assert not list((folder / "cache").glob("*partial*"))


def test_only_rank_0_writes_and_reports(runs):
    folder, stopped, _, resumed = runs
    assert stopped.count("wrote ddp.pt") == 1 and "stopped early (time limit)" in stopped
    assert "continue with: torchrun --nproc-per-node 2 -m spikereveal" in stopped
    assert resumed.count("wrote ddp.pt") == 1 and "2 epoch(s) finished" in resumed and "on 2 process(es)" in resumed
    written = sorted(p.name for p in folder.iterdir() if p.name.startswith("ddp"))
    assert written == ["ddp.pt", "ddp.pt.optim"]


def test_a_distributed_run_stops_on_every_rank_and_resumes_on_any_count(runs, recording):
    folder, _, stopped_meta, _ = runs
    record = stopped_meta["training"]
    assert (record["epochs_completed"], record["step_in_epoch"], record["stopped_early"]) == (0, 1, "time limit")
    # the global batch does not depend on the number of processes: one process continues the 2-rank run
    train([recording], folder / "stopped-ddp.pt", TrainConfig("ldn"), resume=folder / "stopped-ddp.pt",
          options=RunOptions(threads=1, cache_dir=str(folder / "cache")))
    single, _ = load_checkpoint(folder / "single.pt")
    alone, _ = load_checkpoint(folder / "stopped-ddp.pt")
    assert _max_difference(single, alone) < WEIGHT_TOLERANCE


# -- the pieces, in one process -------------------------------------------------------------------------------
@pytest.mark.parametrize("first, stop, batch, world", [(0, 5, 4, 2), (4, 11, 4, 2), (0, 7, 6, 3), (0, 9, 4, 1)])
def test_rank_batches_split_every_global_batch(first, stop, batch, world):
    plans = [rank_batches(first, stop, batch, rank, world) for rank in range(world)]
    one = rank_batches(first, stop, batch, 0, 1)
    assert all(len(plan) == len(one) for plan in plans)
    for step, (whole, weight) in enumerate(one):
        assert weight == 1.0
        shares = [plan[step] for plan in plans]
        used = [indices for indices, w in shares if w > 0]
        assert sorted(i for indices in used for i in indices) == whole  # disjoint, complete, contiguous
        values = np.random.default_rng(step).random(stop)  # any per-crop losses
        shared = sum(w / world * values[indices].mean() for indices, w in shares)  # what DDP's average sees
        assert shared == pytest.approx(values[whole].mean(), rel=1e-12)
        assert all(len(indices) == 1 and indices[0] == whole[0] for indices, w in shares if w == 0)


def test_each_cache_file_is_computed_by_one_rank_and_read_by_all(recording, tmp_path):
    exposures = ds.load_exposures([recording])
    calls: list[tuple[int, int]] = []

    def teacher_of(rank):
        def teacher(exposure, centers):
            calls.append((rank, exposure.exposure_index))
            return np.full((len(centers),) + exposure.blurry.shape, 0.25 + 0.25 * exposure.exposure_index, np.float32)
        return teacher

    work = [(e, ds.teacher_centers(e.window, 5, 9)) for e in exposures] * 2  # each exposure listed twice
    caches = [ds.cached_teacher(teacher_of(rank), tmp_path, "key") for rank in range(2)]
    with pytest.raises(ConfigError, match="--cache-dir"):
        caches[0].reader()(*work[0])  # nothing computed yet: read-only never computes
    assert len(caches[0].missing(work)) == len(work)
    assert caches[0].fill(work, 0, 2) == 1 and len(set(caches[1].missing(work))) == 1
    assert caches[1].fill(work, 1, 2) == 1 and caches[0].missing(work) == []
    assert sorted(calls) == [(0, exposures[0].exposure_index), (1, exposures[1].exposure_index)]
    for cache in caches:
        read = cache.reader()
        for exposure, centers in work:
            np.testing.assert_array_equal(read(exposure, centers), 0.25 + 0.25 * exposure.exposure_index)
    assert [cache.fill(work, rank, 2) for rank, cache in enumerate(caches)] == [0, 0]  # all cached now
    assert ds.teacher_centers(exposures[0].window, 5, 9).tolist() == \
        ds.evenly_spread_centers(exposures[0].window, 9)[::2].tolist()


def test_torchrun_environment_and_devices_are_checked():
    assert not launched_by_torchrun({}) and launched_by_torchrun({"WORLD_SIZE": "2"})
    assert RankPlace.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == RankPlace(1, 2, 1)
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node"):
        RankPlace.from_environment({})
    with pytest.raises(ConfigError, match="inconsistent"):
        RankPlace.from_environment({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    environment = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    with pytest.raises(ConfigError, match="--device cuda"):
        join("cuda:1", environment)


def test_distributed_without_torchrun_is_one_clear_error(recording, tmp_path, capsys, monkeypatch):
    from spikereveal.cli import main

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    code = main(["train", "ldn", "--data", str(recording), "--out", str(tmp_path / "x.pt"), "--teacher", "sdm",
                 "--distributed"])
    assert code == 2 and "torchrun --nproc-per-node N -m spikereveal train" in capsys.readouterr().err


def test_one_rank_joins_and_leaves_a_real_gloo_group(recording, tmp_path, monkeypatch):
    import torch.distributed as dist

    environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
                   "LOCAL_RANK": "0"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = train([recording], tmp_path / "one.pt", TrainConfig("ldn", **{**SETTINGS, "batch_size": 3}),
                   options=RunOptions(threads=1, distributed=True))
    assert result.finished and (result.rank, result.world_size) == (0, 1)
    assert not dist.is_initialized()  # the group train() made is gone
    _, meta = load_checkpoint(tmp_path / "one.pt")
    assert meta["training"]["backend"] == "gloo"


class _ThreeRanks(LocalGroup):
    place = RankPlace(0, 3, 0)

    @property
    def world_size(self) -> int:
        return 3


class _FirstOfTwoAlone(LocalGroup):
    """Rank 0 of 2 whose partner never writes into the folder it sees (no shared filesystem)."""

    place = RankPlace(0, 2, 0)

    @property
    def world_size(self) -> int:
        return 2


def test_a_cache_folder_the_ranks_do_not_share_is_one_clear_error(recording, tmp_path, monkeypatch):
    from spikereveal.training import train as train_module

    monkeypatch.setattr(train_module.distributed, "join", lambda device: _FirstOfTwoAlone(torch.device("cpu")))
    with pytest.raises(ConfigError, match="1 teacher-target file.*shared filesystem"):
        train([recording], tmp_path / "x.pt", TrainConfig("ldn", **SETTINGS), options=RunOptions(distributed=True))
    assert len(list(tmp_path.glob("x.pt.teacher-cache/teacher-*.npy"))) == 1  # its own share, in the default folder
    assert not (tmp_path / "x.pt").exists()


def test_the_batch_must_split_evenly_over_the_ranks(recording, tmp_path, monkeypatch):
    from spikereveal.training import train as train_module

    monkeypatch.setattr(train_module.distributed, "join", lambda device: _ThreeRanks(torch.device("cpu")))
    with pytest.raises(ConfigError, match="multiple of 3"):
        train([recording], tmp_path / "x.pt", TrainConfig("ldn", **SETTINGS), options=RunOptions(distributed=True))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
