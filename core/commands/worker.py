"""``spikereveal worker``: a remote inference worker for ``serve`` (jobs by credit, PUSH results)."""

from __future__ import annotations

from spikereveal.commands._types import add_k_argument, int_pair, output_dir_text


def register(subparsers) -> None:
    from spikereveal.commands.serve import add_engine_arguments

    parser = subparsers.add_parser(
        "worker",
        help="a remote inference worker: pull exposure windows from serve, push sharp frames back",
        description=(
            "Scale-out for 'serve': connect to the job and result endpoints that 'serve --job-endpoint E1 "
            "--result-endpoint E2' binds, run every exposure window it receives (jobs are self-contained) and "
            "send the K sharp frames back; serve re-orders results by exposure. The worker asks for as many jobs "
            "as its --credits, so a slow worker never holds work a faster one could do. Use it when one "
            "machine's inference is slower than the exposure rate. Runs until Ctrl-C / SIGTERM."
        ),
    )
    parser.add_argument("--connect", "--jobs", dest="jobs", required=True, metavar="E1",
                        help="serve's job endpoint, e.g. tcp://serve-host:5560")
    parser.add_argument("--results", required=True, metavar="E2",
                        help="serve's result endpoint, e.g. tcp://serve-host:5561")
    parser.add_argument("--id", type=int, default=None,
                        help="worker id shown in serve's logs and used for its liveness; each worker needs its own "
                             "(default: one drawn from this host and process, clear of serve's local workers 0, 1, ...)")
    parser.add_argument("--credits", type=int, default=1, metavar="N",
                        help="jobs serve may send this worker at once (default 1: the one it runs; 2 keeps the "
                             "next one on hand; serve caps it at its scale_out.in_flight_per_worker_jobs)")
    add_engine_arguments(parser)
    parser.add_argument("--spike-geometry", type=int_pair("HxW", "250x400"), default=None, metavar="HxW",
                        help="load the engine now for this sensor (default: on the first job)")
    add_k_argument(parser, "frames per exposure for --spike-geometry")
    parser.add_argument("--calibration", default=None, metavar="PATH", help="the rig's calibration.json")
    parser.add_argument("--secret-key", metavar="FILE", default=None,
                        help="this worker's NAME.key_secret ('spikereveal keys generate'; its NAME.key must be in "
                             "serve's --allow-keys folder)")
    parser.add_argument("--server-key", metavar="FILE", default=None,
                        help="serve's public .key (needed with --secret-key)")
    parser.add_argument("--work-dir", type=output_dir_text, default=None, metavar="DIR", help="where ONNX exports go (default: a temp dir)")
    parser.set_defaults(func=run)


def default_worker_id() -> int:
    """A worker id for this process: from the host name and the process id, at or above 2**16 (serve numbers
    its local workers from 0), below 2**31 (the wire's field)."""
    import os
    import socket
    import zlib

    key = f"{socket.gethostname()}:{os.getpid()}".encode()
    return (1 << 16) + zlib.crc32(key) % ((1 << 31) - (1 << 16))


def run(args) -> int:
    import logging
    import shutil
    import signal
    import tempfile
    import threading

    from spikereveal.commands.serve import engine_overrides
    from spikereveal.stream.config import EngineConfig
    from spikereveal.stream.worker import worker_main

    from spikereveal.errors import ConfigError
    from spikereveal.stream.security import ClientKeys, is_loopback

    if args.id is None:
        args.id = default_worker_id()
    keys = None
    if (args.secret_key is None) != (args.server_key is None):
        raise ConfigError("--secret-key (this worker's .key_secret) and --server-key (serve's public .key) go "
                          "together")
    if args.secret_key is not None:
        keys = ClientKeys(args.secret_key, args.server_key)
    elif not (is_loopback(args.jobs) and is_loopback(args.results)):
        logging.getLogger("spikereveal.worker").warning(
            "no --secret-key/--server-key: a serve on another host admits only workers with keys, so this one "
            "will get no jobs ('spikereveal keys generate')")
    engine = EngineConfig(**{k: v for k, v in engine_overrides(args).items() if v is not None})
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="spikereveal-worker-")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"worker {args.id}: jobs from {args.jobs}, results to {args.results} (Ctrl-C stops)", flush=True)
        stats = worker_main(args.jobs, args.results, engine, worker_id=args.id, spike_shape=args.spike_geometry,
                            k=args.k, calibration_path=args.calibration, work_dir=work_dir, stop=stop, keys=keys,
                            credits=args.credits)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(f"worker {args.id}: {stats.jobs} exposures, {stats.failed} failed, {stats.malformed} malformed jobs")
    return 0
