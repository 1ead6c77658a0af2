"""SessionRouter: a request continues the idle session holding the longest prefix of its prompt."""

from __future__ import annotations

from deepscout.model_runtime.v4.session_router import SessionRouter


def test_longest_idle_prefix_wins_and_a_busy_session_is_not_shared() -> None:
    router = SessionRouter(max_idle=4)
    short, long = router.acquire([1, 2]), router.acquire([1, 2, 3, 4])
    assert short != long
    router.release(short, [1, 2])
    router.release(long, [1, 2, 3, 4])
    assert router.acquire([1, 2, 3, 4, 5]) == long  # the longest prefix, now busy
    assert router.acquire([1, 2, 3, 4, 6]) == short  # the next best idle one
    fresh = router.acquire([1, 2, 3, 4, 7])
    assert fresh not in (short, long)
    # a prompt must leave at least one token to compute: an equal history is no prefix
    router.release(fresh, [9, 9])
    assert router.acquire([9, 9]) != fresh


def test_idle_sessions_are_bounded_oldest_out() -> None:
    router = SessionRouter(max_idle=2)
    ids = [router.acquire([n]) for n in range(3)]
    for n, session_id in enumerate(ids):
        router.release(session_id, [n])
    assert router.acquire([0, 5]) not in ids  # the oldest hint was dropped
    assert router.acquire([2, 5]) == ids[2]
