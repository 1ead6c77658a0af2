"""The one retry-and-backoff policy of deepscout, on tenacity.

Web search (a rate-limited or silent backend) and the OpenAI-compatible model client (connection errors,
HTTP 408/409/429/5xx) retry through :class:`RetryPolicy`: a bounded number of attempts, exponential
backoff with jitter, and an optional deadline (a ``time.monotonic()`` value) that no attempt and no
backoff sleep outlasts. Whether an error is worth a retry is the caller's ``retry_on`` predicate; the
last error is re-raised as it was when the attempts or the time run out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all, ``first_delay_s`` before the second (doubling up to ``max_delay_s``,
    plus up to ``jitter_s`` of random jitter)."""

    attempts: int
    first_delay_s: float
    max_delay_s: float = 30.0
    jitter_s: float = 0.1

    def retrying(
        self,
        retry_on: Callable[[BaseException], bool],
        *,
        deadline: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Retrying:
        """A tenacity ``Retrying`` for this policy: ``for attempt in policy.retrying(...): with attempt: ...``
        or ``policy.retrying(...)(fn, *args)``."""
        backoff = wait_exponential_jitter(
            multiplier=self.first_delay_s, max=self.max_delay_s, jitter=self.jitter_s
        )

        def wait(state: RetryCallState) -> float:
            delay = float(backoff(state))
            return delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))

        stop: stop_base = stop_after_attempt(max(1, self.attempts))
        if deadline is not None:  # no attempt starts once the backoff would end past the deadline
            stop = stop | stop_before_delay(max(0.0, deadline - time.monotonic()))
        return Retrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(retry_on),
            sleep=sleep,
            reraise=True,
        )
