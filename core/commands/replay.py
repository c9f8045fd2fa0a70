"""``spikereveal replay``: play a recording as a live rig on two ZeroMQ publishers (spikes, RGB)."""

from __future__ import annotations

import math

from spikereveal.commands._types import output_file_text, speed_factor


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="play a recording as live ZeroMQ streams (spike blocks and RGB exposures) at real rate or faster",
        description=(
            "Bind two publishers and play a recording as a live hybrid rig: spike frames in blocks when their "
            "last frame is captured, each RGB exposure when it ends, heartbeats carrying the last sequence "
            "number. Publishers never block: a message refused by the high-water mark is dropped and counted. "
            "Subscribers that connect late miss the start: use --wait-subscribers (or --start-delay-s)."
        ),
    )
    parser.add_argument("recording", metavar="REC", help="recording directory (SPEC §5)")
    parser.add_argument("--spike-endpoint", required=True, metavar="E1",
                        help="endpoint to bind for spike blocks, e.g. tcp://*:5555 or ipc:///tmp/spikes")
    parser.add_argument("--rgb-endpoint", required=True, metavar="E2", help="endpoint to bind for RGB exposures")
    parser.add_argument("--speed", type=speed_factor, default=1.0, metavar="X",
                        help="X times real time; inf = as fast as the sockets take it (default 1)")
    parser.add_argument("--block", type=int, default=32, metavar="F",
                        help="spike frames per message, 8-64 recommended (default 32)")
    parser.add_argument("--loop", action="store_true", help="replay forever as one continuous stream (Ctrl-C stops)")
    parser.add_argument("--start-delay-s", type=float, default=None, metavar="S",
                        help="wait S seconds after binding before streaming "
                             "(default 0.5, or 0 with --wait-subscribers)")
    parser.add_argument("--wait-subscribers", action="store_true",
                        help="wait until a subscriber has subscribed on both endpoints before streaming")
    parser.add_argument("--subscriber-timeout-s", type=float, default=30.0, metavar="S",
                        help="give up waiting for subscribers after S seconds (default 30)")
    parser.add_argument("--heartbeat-s", type=float, default=0.1, metavar="S", help="heartbeat period (default 0.1)")
    parser.add_argument("--drain-s", type=float, default=0.5, metavar="S",
                        help="keep sending final heartbeats for S seconds before closing (default 0.5)")
    parser.add_argument("--as-recorded", action="store_true",
                        help="send spike frames in the recording's bit order and row orientation, as the camera does")
    parser.add_argument("--rgb-to-spike-offset-ns", type=int, default=0, metavar="NS",
                        help="spike-clock time minus the recording's exposure time, to schedule exposures (default 0)")
    parser.add_argument("--send-hwm", type=int, default=1000, metavar="N",
                        help="messages queued per subscriber before sends are dropped (default 1000)")
    parser.add_argument("--secret-key", metavar="FILE", default=None,
                        help="CURVE: this rig's NAME.key_secret ('spikereveal keys generate'); with --allow-keys")
    parser.add_argument("--allow-keys", metavar="DIR", default=None,
                        help="folder of the public *.key files of the subscribers (serve) admitted")
    parser.add_argument("--stats-json", type=output_file_text, metavar="PATH", help="write the replay's counters as JSON")
    parser.set_defaults(func=run)


def run(args) -> int:
    import json
    import signal
    import threading

    from spikereveal.recording import open_recording
    from spikereveal.stream.replay import LiveReplay, ReplayConfig

    start_delay = args.start_delay_s
    if start_delay is None:
        start_delay = 0.0 if args.wait_subscribers else 0.5
    config = ReplayConfig(
        speed=args.speed,
        block_frames=args.block,
        loops=None if args.loop else 1,
        start_delay_s=start_delay,
        wait_for_subscribers=args.wait_subscribers,
        subscriber_timeout_s=args.subscriber_timeout_s,
        heartbeat_interval_s=args.heartbeat_s,
        drain_s=args.drain_s,
        wire_layout="recorded" if args.as_recorded else "canonical",
        rgb_to_spike_offset_ns=args.rgb_to_spike_offset_ns,
        send_hwm=args.send_hwm,
        secret_key_file=args.secret_key,
        allow_keys_dir=args.allow_keys,
    )
    recording = open_recording(args.recording, strict=False)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with LiveReplay(recording, args.spike_endpoint, args.rgb_endpoint, config) as replay:
            speed = "unpaced" if math.isinf(config.speed) else f"{config.speed:g}x real time"
            print(f"replaying {args.recording} ({recording.spikes.frame_count} spike frames, "
                  f"{len(recording.exposures)} exposures, {speed}) on spikes={replay.spike_endpoint} "
                  f"rgb={replay.rgb_endpoint}", flush=True)
            stats = replay.run(stop=stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        recording.close()
    seconds = stats.duration_ns / 1e9
    rate = stats.spike_frames / seconds if seconds > 0 else float("nan")
    print(
        f"sent {stats.spike_frames} spike frames in {stats.spike_messages} blocks, {stats.exposures} exposures, "
        f"{stats.heartbeats} heartbeats in {seconds:.2f} s ({rate:,.0f} frames/s); dropped "
        f"{stats.dropped_messages} messages; max lag {stats.max_lag_ns / 1e6:.2f} ms"
        + ("; stopped early" if stats.stopped else "")
    )
    if args.stats_json:
        with open(args.stats_json, "w", encoding="utf-8") as handle:
            json.dump(stats.as_dict(), handle, indent=2)
    return 0
