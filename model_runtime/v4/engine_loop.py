"""The one thread that drives a V4 engine, so concurrent calls share its batched steps.

The engine is single-threaded. :class:`EngineLoop` owns it: callers on any thread :meth:`~EngineLoop.submit`
a request and read its :class:`RequestOutput` values from their own :class:`RequestStream`; the loop's
thread adds what was submitted, runs ``engine.step()`` while any request is unfinished (one forward for
every running sequence) and hands each output to its stream. Between steps it turns a stream's stop
signals (its caller's cancel events, a consumer that stopped reading) into the request's cancel event,
which the engine honours like the request's deadline. A request that fails (refused by ``add_request``,
or a logits processor raising) fails alone; an error of the step itself fails the requests it ran, and
the loop goes on serving. :meth:`~EngineLoop.close` stops the thread; requests still open then fail.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.engine import GenerationRequest, RequestOutput
from deepscout.model_runtime.v4.engine.engine import ServingEngine
from deepscout.model_runtime.v4.engine.request import LogitsProcessor


class EngineClosedError(DeepscoutError, RuntimeError):
    """The runtime was closed; its engine takes no more requests."""


class RequestStream:
    """One submitted request as its caller sees it: the engine's outputs, in order, ending finished.

    ``stop()`` asks the loop to cancel the request before its next step (the stream still ends with the
    request's last output). Iterating raises what failed the request, alone.
    """

    def __init__(self, request: GenerationRequest, watch: Sequence[threading.Event]) -> None:
        self.cancel = threading.Event()
        self._watch = tuple(watch)
        self._outputs: queue.Queue[RequestOutput | BaseException] = queue.Queue()
        self.error: BaseException | None = None
        processor = request.sampling.logits_processor
        sampling = request.sampling
        if processor is not None:
            sampling = replace(sampling, logits_processor=self._guarded(processor))
        self.request = replace(request, sampling=sampling, cancel=self.cancel)
        self.request_id: str | None = None

    def stop(self) -> None:
        self.cancel.set()

    def __iter__(self) -> Iterator[RequestOutput]:
        while True:
            item = self._outputs.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finished:
                return

    # ----------------------------------------------------------------- the loop's side

    def deliver(self, item: RequestOutput | BaseException) -> None:
        self._outputs.put(item)

    def wants_stop(self) -> bool:
        """Whether the request should be cancelled: it failed, or an event it watches is set."""
        return self.error is not None or any(event.is_set() for event in self._watch)

    def _guarded(self, processor: LogitsProcessor) -> LogitsProcessor:
        """``processor`` whose failure stops this request only (the step goes on for the others)."""

        def run(generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
            if self.error is not None:
                return logits
            try:
                return processor(generated, logits)
            except Exception as error:  # this request's own failure, reported to its caller
                self.error = error
                self.cancel.set()
                return logits

        return run


class EngineLoop:
    """Runs ``engine.step()`` on one thread whenever a submitted request is unfinished."""

    def __init__(self, engine: ServingEngine) -> None:
        self.engine = engine
        self._wake = threading.Condition()
        self._submitted: list[RequestStream] = []
        self._active: dict[str, RequestStream] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, request: GenerationRequest, *, watch: Sequence[threading.Event] = ()) -> RequestStream:
        """Queue ``request``; the stream stops it once any event of ``watch`` is set."""
        stream = RequestStream(request, watch)
        with self._wake:
            if self._closed:
                raise EngineClosedError("the V4 runtime is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="deepscout-v4-engine", daemon=True)
                self._thread.start()
            self._submitted.append(stream)
            self._wake.notify()
        return stream

    def close(self) -> None:
        """Stop the thread after its current step; open requests fail with EngineClosedError."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._submitted and not self.engine.has_unfinished():
                    self._wake.wait()
                if self._closed:
                    break
                submitted, self._submitted = self._submitted, []
            for stream in submitted:
                self._add(stream)
            for stream in self._active.values():
                if stream.wants_stop():
                    stream.cancel.set()
            self._step()
        closed = EngineClosedError("the V4 runtime was closed while this request ran")
        for stream in [*self._submitted, *self._active.values()]:
            stream.deliver(closed)

    def _add(self, stream: RequestStream) -> None:
        try:
            stream.request_id = self.engine.add_request(stream.request)
        except Exception as error:  # e.g. a prompt the pool can never hold: this request's error
            stream.deliver(error)
            return
        self._active[stream.request_id] = stream

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as error:  # the step's own failure: fail the requests it ran, keep serving
            self._fail_all(error)
            return
        for output in outputs:
            stream = self._active.get(output.request_id)
            if stream is None:
                continue
            if output.finished:
                del self._active[output.request_id]
                if stream.error is not None:
                    stream.deliver(stream.error)
                    continue
            stream.deliver(output)

    def _fail_all(self, error: Exception) -> None:
        for request_id, stream in list(self._active.items()):
            _forget(self.engine.cancel, request_id)
            stream.deliver(error)
        self._active.clear()
        try:
            self.engine.step()  # report the cancellations so the engine forgets the requests
        except Exception:  # the engine is broken: the next requests will say so
            return


def _forget(cancel: Callable[[str], None], request_id: str) -> None:
    try:
        cancel(request_id)
    except KeyError:  # finished in the failed step already
        return
