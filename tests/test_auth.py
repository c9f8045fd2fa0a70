"""Issue 14 items 10-11: CURVE keys on serve's ports, results checked against their jobs, a worker that never
answers, and the bound on what output subscribers can cost. Fake runner (no model), tiny rig recording."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time

import numpy as np
import pytest

zmq = pytest.importorskip("zmq")
cv2 = pytest.importorskip("cv2")

from cli_support import assert_user_error, run_cli  # noqa: E402
from stream_support import H, W, FakeRunner, ServerThread, free_tcp_endpoints, tiny_rig_recording  # noqa: E402
from spikereveal.errors import ConfigError  # noqa: E402
from spikereveal.stream import security  # noqa: E402
from spikereveal.stream.config import load_serve_config  # noqa: E402
from spikereveal.stream.transport import GuardedPublisher, SubscriptionLedger  # noqa: E402

K = 3
DONE = 4  # tiny_rig_recording: 6 exposures, the first and the last have windows outside the data


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "rec"
    tiny_rig_recording(path, seed=4).close()
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Key pairs of serve, a worker, a viewer, the rig and a stranger; allow-lists of serve and of the rig."""
    root = tmp_path_factory.mktemp("keys")
    pairs = {name: security.generate_keys(root / "pairs", name) for name in
             ("serve", "worker", "viewer", "rig", "stranger")}
    for folder, names in (("serve_allow", ("worker", "viewer")), ("rig_allow", ("serve",))):
        (root / folder).mkdir()
        for name in names:
            shutil.copy(pairs[name][0], root / folder)
    return {"root": root, **{name: {"public": str(p), "secret": str(s)} for name, (p, s) in pairs.items()}}


def _fake_factory(shape):
    runner = FakeRunner(shape)
    runner.options = runner.options.__class__(warmup_runs=0)
    return runner


def run_pipeline(recording, tmp_path, security_section=None, workers=(), rogues=(), replay_keys=None,
                 result_timeout_s=30.0, on_ready=None):
    """serve (thread) with job/result ports on loopback tcp, worker threads (``workers``: ClientKeys or None
    each), ``rogues`` (callables(jobs, results, stop) run in threads), and a replay of ``recording``."""
    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import LiveReplay, ReplayConfig
    from spikereveal.stream.worker import run_worker

    folder = tempfile.mkdtemp(prefix="sr-", dir="/tmp")
    try:
        jobs, results = free_tcp_endpoints(2)
        config = load_serve_config(
            None, spike_endpoint=f"ipc://{folder}/s", rgb_endpoint=f"ipc://{folder}/r",
            output_endpoint=f"ipc://{folder}/o", spike_height=H, spike_width=W, idle_timeout_s=1.0,
            sync={"k": K},
            worker={"save_dir": str(tmp_path / "serve"), "queue_capacity_jobs": 8, "drain_timeout_s": 2.0},
            scale_out={"job_endpoint": jobs, "result_endpoint": results, "remote_workers": max(1, len(workers)),
                       "result_timeout_s": result_timeout_s},
            security=security_section or {})
        serving = ServerThread(config).start(60)
        server, stop = serving.server, threading.Event()
        worker_stats = [None] * len(workers)

        def run_one(index, worker_keys):
            worker_stats[index] = run_worker(jobs, results, _fake_factory, worker_id=index, spike_shape=(H, W), k=K,
                                             stop=stop, keys=worker_keys)

        helpers = [threading.Thread(target=run_one, args=(i, k)) for i, k in enumerate(workers)]
        helpers += [threading.Thread(target=rogue, args=(jobs, results, stop)) for rogue in rogues]
        for thread in helpers:
            thread.start()
        if on_ready is not None:
            on_ready(server)
        time.sleep(0.5)  # workers connect (and authenticate) before the first job
        replay_config = ReplayConfig(speed=math_inf(), block_frames=8, wait_for_subscribers=True, start_delay_s=0,
                                     subscriber_timeout_s=20, drain_s=0.2, heartbeat_interval_s=0.02,
                                     **(replay_keys or {}))
        with open_recording(recording, strict=False) as rec:
            with LiveReplay(rec, config.spike_endpoint, config.rgb_endpoint, replay_config) as replay:
                replay.run()
        try:
            counters = serving.join(60)
        finally:
            stop.set()
            for thread in helpers:
                thread.join(30)
        return counters, worker_stats
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def math_inf():
    return float("inf")


def _saved_frames(tmp_path):
    names = sorted((tmp_path / "serve" / "frames").glob("*.png"))
    return [cv2.imread(str(name)) for name in names]


# -- keys ------------------------------------------------------------------------------------------------------
def test_keys_generate_writes_usable_files_and_refuses_to_overwrite(tmp_path):
    from zmq.auth import load_certificate

    result = run_cli("keys", "generate", "--out", tmp_path / "k", "--name", "worker1")
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "k" / "worker1.key", tmp_path / "k" / "worker1.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    pub, sec = load_certificate(secret)
    assert load_certificate(public) == (pub, None) and zmq.curve_public(sec) == pub
    assert security.load_key_pair(secret) == (pub, sec)
    again = run_cli("keys", "generate", "--out", tmp_path / "k", "--name", "worker1")
    assert_user_error(again, "already exist", "--force")
    assert load_certificate(secret) == (pub, sec)  # untouched
    forced = run_cli("keys", "generate", "--out", tmp_path / "k", "--name", "worker1", "--force")
    assert forced.returncode == 0 and load_certificate(secret)[0] != pub
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["worker1.key", "worker1.key_secret"]


def test_bad_key_files_are_clear_errors(tmp_path, keys):
    (tmp_path / "bad.key_secret").write_text('curve\n    public-key = "short"\n    secret-key = "x"\n')
    with pytest.raises(ConfigError, match="malformed key"):
        security.load_key_pair(tmp_path / "bad.key_secret")
    with pytest.raises(ConfigError, match="only a public key"):
        security.load_key_pair(keys["serve"]["public"])
    with pytest.raises(ConfigError, match="does not exist.*keys generate"):
        security.load_key_pair(tmp_path / "missing.key_secret")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        security.ServerKeys(keys["serve"]["secret"], str(tmp_path / "empty"))


@pytest.mark.parametrize("endpoint, loopback", [
    ("tcp://127.0.0.1:5560", True), ("tcp://127.3.2.1:1", True), ("tcp://localhost:5560", True),
    ("tcp://[::1]:5560", True), ("ipc:///tmp/x", True), ("inproc://x", True), ("tcp://*:5560", False),
    ("tcp://0.0.0.0:5560", False), ("tcp://192.168.1.4:5560", False), ("tcp://eth0:5560", False),
    ("tcp://serve-host:5560", False)])
def test_loopback_endpoints(endpoint, loopback):
    assert security.is_loopback(endpoint) is loopback


def test_cli_refuses_a_non_loopback_job_endpoint_without_keys(tmp_path):
    args = ["serve", "--spike-endpoint", f"ipc://{tmp_path}/s", "--rgb-endpoint", f"ipc://{tmp_path}/r",
            "--output-endpoint", f"ipc://{tmp_path}/o", "--job-endpoint", "tcp://*:5560", "--result-endpoint",
            "tcp://127.0.0.1:5561"]
    assert_user_error(run_cli(*args, timeout=60), "refusing to bind the job endpoint tcp://*:5560",
                      "spikereveal keys generate")


# -- an authenticated exchange -----------------------------------------------------------------------------------
def test_curve_everywhere_admits_only_allow_listed_peers(recording, tmp_path, keys):
    """serve <-> workers over tcp://127.0.0.1 with keys, rig and output ports with keys too: the allow-listed
    worker does every job, a worker without keys and one with a key not in the allow-list get none; an
    allow-listed viewer receives the frames, one without keys receives nothing."""
    serve_allow = str(keys["root"] / "serve_allow")
    section = {"secret_key_file": keys["serve"]["secret"], "allow_keys_dir": serve_allow, "output_curve": True,
               "rig_key_file": keys["rig"]["public"]}
    good = security.ClientKeys(keys["worker"]["secret"], keys["serve"]["public"])
    stranger = security.ClientKeys(keys["stranger"]["secret"], keys["serve"]["public"])
    received = {"viewer": 0, "anonymous": 0}
    viewers_stop = threading.Event()
    viewer_threads = []

    def viewers(server):
        for name, viewer_keys in (("viewer", security.ClientKeys(keys["viewer"]["secret"], keys["serve"]["public"])),
                                  ("anonymous", None)):
            def watch(name=name, viewer_keys=viewer_keys):
                from spikereveal.stream.transport import open_subscriber

                context = zmq.Context()
                sub = open_subscriber(context, server.output_endpoint, keys=viewer_keys)
                while not viewers_stop.is_set():
                    if sub.poll(50):
                        sub.recv_multipart()
                        received[name] += 1
                sub.close(linger=0)
                context.term()

            viewer_threads.append(threading.Thread(target=watch))
            viewer_threads[-1].start()

    try:
        counters, stats = run_pipeline(
            recording, tmp_path, section, workers=(good, None, stranger), on_ready=viewers,
            replay_keys={"secret_key_file": keys["rig"]["secret"], "allow_keys_dir": str(keys["root"] / "rig_allow")})
    finally:
        viewers_stop.set()
        for thread in viewer_threads:
            thread.join(10)
    assert counters["exposures_done"] == DONE and counters["worker_lost"] == 0
    assert [s.jobs for s in stats] == [DONE, 0, 0]
    assert counters["results_rejected"] == 0
    assert received["viewer"] == DONE * K and received["anonymous"] == 0


# -- results checked against their jobs, workers that never answer ---------------------------------------------
def _forger(count):
    """A stranger on the result port (no keys: the ports are loopback) pushing white frames for ids 0..count-1."""
    def forge(jobs, results, stop):
        from spikereveal.stream.stage import ExposureResult
        from spikereveal.stream.wire import encode_result

        context = zmq.Context()
        push = context.socket(zmq.PUSH)
        push.connect(results)
        white = np.full((K, 4 * H, 4 * W, 3), 255, np.uint8)
        for exposure_id in range(count):
            result = ExposureResult(exposure_id=exposure_id, timestamps_ns=np.arange(K, dtype=np.int64),
                                    sharp=white, received_ns=0, ready_ns=0, started_ns=0, prepare_ns=0,
                                    inference_ns=0, postprocess_ns=0, finished_ns=0)
            push.send_multipart(encode_result(result, 9))
        push.send_multipart([b"res", b"garbage", b"", b""])
        stop.wait(20)
        push.close(linger=0)
        context.term()
    return forge


def test_forged_results_are_counted_and_never_published(recording, tmp_path):
    counters, stats = run_pipeline(recording, tmp_path, workers=(None,), rogues=(_forger(140),))
    assert counters["exposures_done"] == DONE and stats[0].jobs == DONE
    assert counters["results_rejected"] == 141  # every forged one, whenever it arrived, and the garbage one
    assert counters["results_rejected_by_reason"]["malformed"] == 1
    frames = _saved_frames(tmp_path)
    assert len(frames) == DONE * K and all(frame.max() < 255 for frame in frames)


def _black_hole(jobs, results, stop):
    """Asks for jobs (one credit, announced once), takes them and never answers."""
    from spikereveal.stream.wire import decode_job, encode_ready

    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(jobs)
    dealer.send_multipart(encode_ready(5))
    while not stop.is_set():
        if dealer.poll(20):
            parts = dealer.recv_multipart()
            if parts[0] == b"job":
                decode_job(parts)
                _black_hole.taken += 1
    dealer.close(linger=0)
    context.term()


def test_a_worker_that_takes_jobs_and_never_answers_does_not_stall_serve(recording, tmp_path):
    _black_hole.taken = 0
    started = time.monotonic()
    counters, stats = run_pipeline(recording, tmp_path, workers=(None,), rogues=(_black_hole,),
                                   result_timeout_s=0.5)
    assert time.monotonic() - started < 20
    assert _black_hole.taken >= 1 and counters["worker_lost"] == _black_hole.taken
    assert counters["exposures_done"] == stats[0].jobs == DONE - _black_hole.taken
    assert counters["exposures_done"] + counters["exposures_dropped"] == DONE


# -- what a subscriber can cost ---------------------------------------------------------------------------------
def test_subscription_ledger_counts_refuses_and_asks_for_a_reset():
    ledger = SubscriptionLedger((b"sharp",), max_subscriptions=10)
    assert ledger.allowed == {b"", b"s", b"sh", b"sha", b"shar", b"sharp"}
    for topic in (b"", b"sharp", b"sh"):
        assert not ledger.on_message(b"\x01" + topic)
    assert ledger.held == 3 and ledger.refused == 0
    over = [ledger.on_message(b"\x01" + b"junk%d" % i) for i in range(8)]
    assert over == [False] * 7 + [True] and ledger.refused == 8 and ledger.held == 11
    ledger.reset()
    assert ledger.held == 0 and ledger.resets == 1
    ledger.on_message(b"\x01junk")
    ledger.on_message(b"\x00junk")
    ledger.on_message(b"\x00never-held")  # does not go below zero
    assert ledger.held == 0 and ledger.refused == 9


def test_many_subscriptions_are_capped_and_viewers_come_back(tmp_path):
    context = zmq.Context()
    endpoint = f"ipc://{tmp_path}/o"
    output = GuardedPublisher(context, endpoint, topics=(b"sharp",), max_subscriptions=100)
    viewer = context.socket(zmq.SUB)
    viewer.setsockopt(zmq.SUBSCRIBE, b"")
    viewer.connect(endpoint)
    attacker = context.socket(zmq.XSUB)
    attacker.setsockopt(zmq.SNDHWM, 0)
    attacker.connect(endpoint)
    try:
        sent = 3000
        for i in range(sent):
            attacker.send(b"\x01topic-%06d" % i)
        attacker.send(b"\x01" + b"x" * 2000)  # over MAX_TOPIC_BYTES: that peer is dropped
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and output.ledger.resets == 0:
            output.poll()
            assert output.ledger.held <= 100
            time.sleep(0.005)
        attacker.close(linger=0)  # the attacker leaves (else it reconnects and re-sends its subscriptions)
        for _ in range(50):
            output.poll()
            time.sleep(0.01)
        assert output.ledger.resets >= 1 and output.ledger.refused >= 100 and output.ledger.held <= 100
        # the viewer reconnects and re-subscribes by itself
        got = False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not got:
            output.poll()
            output.publish([b"sharp", b"h", b"p"])
            got = bool(viewer.poll(20))
        assert got and output.ledger.held == 1  # only the viewer's b"" is held now
    finally:
        attacker.close(linger=0)
        viewer.close(linger=0)
        output.close()
        context.term()


def test_serve_reports_refused_subscriptions(recording, tmp_path):
    def subscribe_junk(server):
        context = zmq.Context()
        sub = context.socket(zmq.SUB)
        for i in range(5):
            sub.setsockopt(zmq.SUBSCRIBE, b"junk%d" % i)
        sub.connect(server.output_endpoint)
        subscribe_junk.keep = (context, sub)

    try:
        counters, _ = run_pipeline(recording, tmp_path, workers=(None,), on_ready=subscribe_junk)
    finally:
        context, sub = subscribe_junk.keep
        sub.close(linger=0)
        context.term()
    assert counters["subscriptions_refused"] == 5 and counters["output_resets"] == 0
    assert counters["exposures_done"] == DONE


def test_config_rejects_half_given_keys(keys):
    with pytest.raises(ConfigError, match="go together"):
        load_serve_config(None, spike_endpoint="ipc:///tmp/a", rgb_endpoint="ipc:///tmp/b",
                          output_endpoint="ipc:///tmp/c", security={"secret_key_file": keys["serve"]["secret"]})
    with pytest.raises(ConfigError, match="refusing to bind the result endpoint"):
        load_serve_config(None, spike_endpoint="ipc:///tmp/a", rgb_endpoint="ipc:///tmp/b",
                          output_endpoint="ipc:///tmp/c",
                          scale_out={"job_endpoint": "tcp://127.0.0.1:1", "result_endpoint": "tcp://10.0.0.1:2"})
