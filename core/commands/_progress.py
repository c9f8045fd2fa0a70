"""Progress bars for training events (``spikereveal.training.train.TrainProgress``), shared by the verbs
that train (``train``, ``adapt``): one tqdm bar per preparation step and per epoch."""

from __future__ import annotations

from typing import Callable


def train_progress_bars(tqdm, leave: bool = True) -> tuple[Callable[..., None], Callable[[], None]]:
    """``(draw(event, head=None), close_all())``: ``draw`` updates the bar of a training event; ``head``
    prefixes the bar's description (default: the network's name). ``leave`` keeps finished epoch bars."""
    bars: dict[str, object] = {}

    def close_all() -> None:
        for key in list(bars):
            bars.pop(key).close()

    def draw(event, head: str | None = None) -> None:
        key = "prepare:" + event.message if event.phase == "prepare" else f"{head} epoch {event.epoch}"
        if event.phase == "epoch":
            bar = bars.pop(key, None)
            if bar is not None:
                bar.close()
            return
        bar = bars.get(key)
        if bar is None:
            close_all()
            prefix = head or event.kind
            desc = (event.message if head is None else f"{head} {event.message}") if event.phase == "prepare" \
                else f"{prefix} epoch {event.epoch + 1}/{event.epochs}"
            bar = bars[key] = tqdm(total=event.steps, desc=desc, unit="step" if event.phase == "step" else "exp",
                                   initial=max(event.step - 1, 0), leave=leave and event.phase == "step")
        bar.n = event.step
        if event.phase == "step":
            bar.set_postfix({name: f"{value:.4g}" for name, value in event.losses.items()} | {"lr": f"{event.lr:.2e}"},
                            refresh=False)
        bar.refresh()

    return draw, close_all
