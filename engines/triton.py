"""Triton Inference Server runner: each exposure window is one gRPC request to a Triton model.

The model is a repository written by ``spikereveal export --triton-repo`` (``engines.triton_repo``), served by
Triton on a GPU box or a Jetson; the rig's ``serve`` keeps everything else (sync, window cut, firing-gain
check, sinks) and only the ``runner.infer`` call crosses the network. ``load()`` waits (with backoff) for the
server and the model, checks that the model's I/O is the deployed graph's for this geometry (uint8
``image``/``spikes`` -> ``sharp``) and reads the export's precision and trained firing-gain range from the
model's ``parameters``.

Failures are counted and contained, never a crash or a wrong frame (``stats``):

* every attempt has a deadline (``TritonOptions.request_timeout_s``); an attempt that fails because the server
  is unreachable, restarting, the model is (re)loading or the deadline passed is retried up to
  ``retries`` times with exponential backoff (``backoff_s`` doubling, at most ``max_backoff_s``);
* a request Triton's queue policy rejected (the exposure waited past the model's queue timeout, or the
  queue was full) is not retried: it is serve's drop policy at the server (``rejected``);
* a request the server refuses as malformed is not retried;
* a response whose ``sharp`` is not exactly (K, H, W, 3) uint8 is refused (``bad_responses``).

An exposure that fails raises :class:`TritonInferenceError` (a RunnerError): serve counts it in
``exposures_failed`` and goes on with the next one; ``deblur`` stops with the message. At most
``max_in_flight`` requests are outstanding per runner (``submit``/``wait``; ``infer`` is one of each).
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spikereveal.engines.runners import (
    INPUT_NAMES,
    IO_DTYPE,
    OUTPUT_NAME,
    InputShape,
    Runner,
    RunnerError,
    RunnerOptions,
    TritonOptions,
)
from spikereveal.engines.onnx_metadata import _strip_prefix
from spikereveal.errors import ConfigError, MissingDependencyError, SpikeRevealError

__all__ = ["TritonRunner", "TritonInferenceError", "classify_error"]

logger = logging.getLogger(__name__)



class TritonInferenceError(RunnerError):
    """One exposure could not be inferred by Triton (after the retries its kind of failure allows)."""


def _import_client():
    try:
        return importlib.import_module("tritonclient.grpc")
    except Exception as exc:
        raise MissingDependencyError("tritonclient[grpc]", "the Triton engine (--engine triton)", "triton") from exc


#: words in a Triton error that say its queue policy dropped the request (Triton core's messages)
_REJECTED_WORDS = ("exceeds maximum queue size", "request timeout")
_NOT_RETRIED_STATUS = ("INVALID_ARGUMENT", "UNIMPLEMENTED", "PERMISSION_DENIED", "UNAUTHENTICATED")


def classify_error(exc: BaseException) -> str:
    """``"rejected"`` (Triton's queue policy dropped it), ``"timeout"`` (the attempt's deadline passed),
    ``"invalid"`` (the server refuses the request as such) or ``"unavailable"`` (anything else: unreachable,
    restarting, model loading). Only ``timeout`` and ``unavailable`` are retried."""
    status = str(getattr(exc, "status", lambda: None)() or "")
    message = str(getattr(exc, "message", lambda: None)() or exc).lower()
    if any(word in message for word in _REJECTED_WORDS):
        return "rejected"
    if "DEADLINE_EXCEEDED" in status or "deadline exceeded" in message:
        return "timeout"
    if any(code in status for code in _NOT_RETRIED_STATUS):
        return "invalid"
    return "unavailable"


@dataclass
class _Pending:
    inputs: list
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class TritonRunner(Runner):
    """A Triton model over gRPC as a Runner (``--engine triton --triton-url URL [--triton-model NAME]``)."""

    name = "triton"

    def __init__(self, shape: InputShape, precision: str = "fp32", options: RunnerOptions | None = None):
        super().__init__(shape, precision, options)
        triton = self.options.triton
        if triton is None or not triton.url:
            raise ConfigError("the triton engine needs the server's gRPC address: --triton-url HOST:PORT "
                              "(engine.triton_url in rig.json)")
        self.triton: TritonOptions = triton
        self._client = None
        self._grpc = None
        self._slots: threading.BoundedSemaphore | None = None
        self._tickets: dict[int, _Pending] = {}
        self._next_ticket = 0
        self.model_version = ""
        self.stats = {"requests": 0, "ok": 0, "retries": 0, "timeouts": 0, "unavailable": 0, "rejected": 0,
                      "invalid": 0, "bad_responses": 0, "failed": 0}
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------------
    def _connect(self):
        grpc = _import_client()
        options = self.triton
        # replacing tritonclient's channel arguments: keep its message-size limit (an rsb exposure is 34 MB)
        # and reconnect quickly after a server restart
        limit = getattr(grpc, "MAX_GRPC_MESSAGE_SIZE", 2 ** 31 - 1)
        channel_args = [
            ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit),
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max(0.1, options.max_backoff_s) * 1000)),
        ]
        try:
            return grpc, grpc.InferenceServerClient(options.url, channel_args=channel_args)
        except Exception as exc:  # a malformed URL fails here
            raise ConfigError(f"--triton-url {options.url!r} is not a usable gRPC address ({exc}); give "
                              "HOST:PORT, e.g. triton.lab:8001") from exc

    def _load(self) -> None:
        self._grpc, self._client = self._connect()
        options = self.triton
        deadline = time.monotonic() + options.connect_timeout_s
        delay, last = options.backoff_s, None
        while True:
            try:
                if self._client.is_model_ready(options.model, client_timeout=options.request_timeout_s):
                    break
                last = f"the server answers but model {options.model!r} is not ready"
            except Exception as exc:  # noqa: BLE001 (tritonclient wraps every gRPC failure in its own type)
                last = str(exc)
            if time.monotonic() + delay > deadline:
                self._close()
                raise RunnerError(
                    f"Triton at {options.url} has no ready model {options.model!r} after "
                    f"{options.connect_timeout_s:g} s ({last}); start Triton on a repository written by "
                    "'spikereveal export --triton-repo DIR', or fix --triton-url/--triton-model")
            time.sleep(delay)
            delay = min(delay * 2, options.max_backoff_s)
        try:
            self._check_model(self._client.get_model_config(options.model, as_json=True,
                                                            client_timeout=options.request_timeout_s))
        except SpikeRevealError:
            self._close()
            raise
        except Exception as exc:  # noqa: BLE001
            self._close()
            raise RunnerError(f"Triton at {options.url}: cannot read the configuration of {options.model!r}: "
                              f"{exc}") from exc
        self._slots = threading.BoundedSemaphore(options.max_in_flight)
        self.sharp = np.zeros(self.shape.sharp, IO_DTYPE)

    def _check_model(self, response: dict) -> None:
        config = response.get("config", response)
        where = f"Triton model {self.triton.model!r} at {self.triton.url}"
        if int(config.get("max_batch_size", 0) or 0) != 0:
            raise RunnerError(f"{where} has max_batch_size {config['max_batch_size']}; the runner sends one "
                              "exposure per request (max_batch_size 0): serve a repository written by "
                              "'spikereveal export --triton-repo'")
        expected = {"image": self.shape.image, "spikes": self.shape.spikes, "sharp": self.shape.sharp}
        tensors = {t["name"]: t for t in list(config.get("input", [])) + list(config.get("output", []))}
        names = sorted(tensors)
        if names != sorted((*INPUT_NAMES, OUTPUT_NAME)):
            raise RunnerError(f"{where} has tensors {names}, not the deployed graph's image, spikes -> sharp; "
                              "serve a repository written by 'spikereveal export --triton-repo'")
        for name, shape in expected.items():
            tensor = tensors[name]
            dims = [int(d) for d in tensor.get("dims", [])]
            if tensor.get("data_type") != "TYPE_UINT8" or len(dims) != len(shape) or any(
                    d not in (-1, s) for d, s in zip(dims, shape)):
                raise ConfigError(f"{where} takes {name} {tensor.get('data_type')} {dims}, but this geometry needs "
                                  f"uint8 {list(shape)}; export a repository for it (--k/--image-height/"
                                  "--image-width, or --dynamic)")
        params = _strip_prefix({key: (value or {}).get("string_value", "")
                                for key, value in (config.get("parameters") or {}).items()})  # as the export's
        held = params.get("precision")
        if held is not None and held != self.precision:
            raise ConfigError(f"{where} holds a {held} export but --precision {self.precision} was asked for; "
                              f"pass --precision {held} or export a {self.precision} repository")
        from spikereveal.engines.runners import onnx_gain_range

        self.firing_gain_range = onnx_gain_range(params)
        self.model_metadata = params

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 (closing a channel to a dead server may raise; nothing to do)
                pass
        self._tickets.clear()

    # -- inference -------------------------------------------------------------------------------------
    def _inputs(self, image: np.ndarray, spikes: np.ndarray) -> list:
        grpc = self._grpc
        inputs = []
        for name, array in (("image", image), ("spikes", spikes)):
            tensor = grpc.InferInput(name, list(array.shape), "UINT8")
            tensor.set_data_from_numpy(array)  # serialized now: the caller may reuse its buffer at once
            inputs.append(tensor)
        return inputs

    def _send(self, pending: _Pending) -> None:
        pending.done.clear()
        pending.result = pending.error = None

        def callback(result, error):
            pending.result, pending.error = result, error
            pending.done.set()

        try:
            self._client.async_infer(self.triton.model, pending.inputs, callback,
                                     outputs=[self._grpc.InferRequestedOutput(OUTPUT_NAME)],
                                     client_timeout=self.triton.request_timeout_s)
        except Exception as exc:  # noqa: BLE001 (a closed channel raises here rather than in the callback)
            callback(None, exc)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def submit(self, image: np.ndarray, spikes: np.ndarray) -> int:
        """Send one exposure; returns a ticket for :meth:`wait`. At most ``max_in_flight`` may be out: a
        submit beyond that waits up to the request timeout for a slot, then fails the exposure."""
        if not self.loaded:
            raise RunnerError("triton runner: call load() before submit()")
        image = self._check_input("image", image, self.shape.image)
        spikes = self._check_input("spikes", spikes, self.shape.spikes)
        if not self._slots.acquire(timeout=self.triton.request_timeout_s):
            self._count("failed")
            raise TritonInferenceError(f"{self.triton.max_in_flight} requests to Triton are still in flight; "
                                       "exposure not sent")
        pending = _Pending(self._inputs(image, spikes))
        self._count("requests")
        self._send(pending)
        ticket = self._next_ticket
        self._next_ticket += 1
        self._tickets[ticket] = pending
        return ticket

    def wait(self, ticket: int, out: np.ndarray | None = None) -> np.ndarray:
        """The ``sharp`` of ``ticket`` in ``out`` (or the runner's own buffer), retrying as the module says."""
        pending = self._tickets.pop(ticket, None)
        if pending is None:
            raise RunnerError(f"triton runner: no exposure in flight with ticket {ticket}")
        options = self.triton
        target = self.sharp if out is None else out
        try:
            delay = options.backoff_s
            for attempt in range(options.retries + 1):
                # the gRPC deadline ends every attempt; the margin covers a callback that is late to run
                if not pending.done.wait(options.request_timeout_s + 5.0):
                    kind, error = "timeout", TimeoutError("no answer from the gRPC client")
                elif pending.error is None:
                    return self._take(pending.result, target)
                else:
                    error = pending.error
                    kind = classify_error(error)
                self._count("timeouts" if kind == "timeout" else kind)
                if kind in ("rejected", "invalid") or attempt == options.retries:
                    break
                self._count("retries")
                logger.debug("Triton attempt %d failed (%s: %s); retrying in %.2f s", attempt + 1, kind, error, delay)
                time.sleep(delay)
                delay = min(delay * 2, options.max_backoff_s)
                self._send(pending)
            self._count("failed")
            what = {"rejected": "rejected by the model's queue policy (the exposure waited too long)",
                    "invalid": "refused by the server", "timeout": "not answered in time",
                    "unavailable": "not answered (server unreachable or restarting)"}[kind]
            raise TritonInferenceError(f"Triton {what} after {attempt + 1} attempt(s) at {options.url}: {error}")
        finally:
            self._slots.release()

    def _take(self, result, target: np.ndarray) -> np.ndarray:
        try:
            sharp = result.as_numpy(OUTPUT_NAME)
        except Exception as exc:  # noqa: BLE001 (tritonclient reshapes the raw bytes: a short answer raises)
            self._count("bad_responses")
            self._count("failed")
            raise TritonInferenceError(f"Triton answered an unreadable {OUTPUT_NAME!r} ({exc}), expected uint8 "
                                       f"{self.shape.sharp}; frame refused") from exc
        if sharp is None or sharp.dtype != IO_DTYPE or sharp.shape != self.shape.sharp:
            self._count("bad_responses")
            self._count("failed")
            got = "nothing" if sharp is None else f"{sharp.dtype} {sharp.shape}"
            raise TritonInferenceError(f"Triton answered {got} for {OUTPUT_NAME!r}, expected uint8 "
                                       f"{self.shape.sharp}; frame refused")
        np.copyto(target, sharp)
        self._count("ok")
        return target

    def _infer(self, image: np.ndarray, spikes: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return self.wait(self.submit(image, spikes), out)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(url=self.triton.url, model=self.triton.model, stats=dict(self.stats),
                    request_timeout_s=self.triton.request_timeout_s, retries=self.triton.retries)
        return info
