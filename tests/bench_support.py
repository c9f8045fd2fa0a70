"""A synthetic traced run driven by a manual clock: every stage takes a known time (for report/plot tests)."""

from __future__ import annotations

from spikereveal.stream.trace import (
    EXPOSURE_RECEIVED,
    FIRST_OUTPUT_PUBLISHED,
    INFERENCE_END,
    INFERENCE_START,
    LAST_OUTPUT_PUBLISHED,
    LAST_SPIKE_RECEIVED,
    WINDOW_COMPLETE,
    WINDOW_CUT,
    TraceRecorder,
)
from spikereveal.stream.clock import ManualClock

MS = 1_000_000
PERIOD_NS = 40 * MS  # 25 exposures/s on the rig clock
FIRST_END_NS = 1_000 * MS
K = 7
DELIVERY_NS = MS // 2  # exposure end -> exposure message received
CUT_NS = 200_000
PREPROCESS_NS = MS
FIRST_PUBLISH_NS = 300_000
PUBLISH_NS = 1_200_000
COMPLETE_NS = 10_000  # after the later of (exposure, last spike)


def spike_lag_ns(i: int) -> int:
    """Last spike of the window arrives 0, 0.1 or 0.2 ms after the exposure message."""
    return (i % 3) * 100_000


def inference_ns(i: int) -> int:
    return 20 * MS + i * 10_000


def synthetic_run(exposures: int = 30, dropped: tuple[int, ...] = (), capacity: int | None = None,
                  offset_known: bool = True) -> TraceRecorder:
    """Exposure i ends at FIRST_END_NS + i * PERIOD_NS; exposures in ``dropped`` stop after the window cut."""
    clock = ManualClock(0)
    recorder = TraceRecorder(capacity or max(exposures, 1), k=K, rig_to_host_offset_ns=0 if offset_known else None)
    for i in range(exposures):
        end = FIRST_END_NS + i * PERIOD_NS
        slot = recorder.begin(100 + i, end)
        clock.set_ns(end + DELIVERY_NS)
        recorder.mark(slot, EXPOSURE_RECEIVED, clock.now_ns())
        clock.advance_ns(spike_lag_ns(i))
        recorder.mark(slot, LAST_SPIKE_RECEIVED, clock.now_ns())
        clock.advance_ns(COMPLETE_NS)
        recorder.mark(slot, WINDOW_COMPLETE, clock.now_ns())
        clock.advance_ns(CUT_NS)
        recorder.mark(slot, WINDOW_CUT, clock.now_ns())
        if i in dropped:
            continue
        clock.advance_ns(PREPROCESS_NS)
        recorder.mark(slot, INFERENCE_START, clock.now_ns())
        clock.advance_ns(inference_ns(i))
        recorder.mark(slot, INFERENCE_END, clock.now_ns())
        clock.advance_ns(FIRST_PUBLISH_NS)
        recorder.mark(slot, FIRST_OUTPUT_PUBLISHED, clock.now_ns())
        clock.advance_ns(PUBLISH_NS)
        recorder.mark(slot, LAST_OUTPUT_PUBLISHED, clock.now_ns())
        recorder.set_outputs(slot, K)
    return recorder


def e2e_last_ns(i: int) -> int:
    """Exposure end -> last output published, by construction."""
    return (DELIVERY_NS + spike_lag_ns(i) + COMPLETE_NS + CUT_NS + PREPROCESS_NS + inference_ns(i)
            + FIRST_PUBLISH_NS + PUBLISH_NS)
