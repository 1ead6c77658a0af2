"""One live driver per batch job: a second is refused while the first's process lives and beats; a
driver killed on this host, or silent past the stale limit, is taken over at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta

import pytest
from conftest import questions
from fake_research_model import fake_registry

from deepscout.batch.batch_api import create_batch, resume_batch
from deepscout.batch.batch_errors import BatchBusyError
from deepscout.batch.batch_options import BatchOptions
from deepscout.batch.batch_store import STALE_AFTER_S, holder_is_gone
from deepscout.memory import batch_records
from deepscout.memory.db import open_database, write_session
from deepscout.memory.tables import utcnow


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_holder_liveness() -> None:
    host, now = socket.gethostname(), utcnow()
    assert not holder_is_gone(f"{host}:{os.getpid()}:x", now, now=now)
    assert holder_is_gone(f"{host}:{_dead_pid()}:x", now, now=now)
    assert not holder_is_gone("elsewhere:1:x", now, now=now)
    assert holder_is_gone("elsewhere:1:x", now - timedelta(seconds=STALE_AFTER_S + 1), now=now)
    assert holder_is_gone("elsewhere:1:x", None, now=now)


@pytest.mark.parametrize("batch_settings", ["sqlite"], indirect=True)
def test_a_second_driver_is_refused_while_the_first_lives(batch_settings, write_jsonl, tmp_path) -> None:
    database = open_database(batch_settings)
    batch_id = create_batch(
        write_jsonl(questions(2)), out_dir=tmp_path / "out", options=BatchOptions(), database=database
    )
    live = f"{socket.gethostname()}:{os.getpid()}:other"
    with write_session(database.session_factory) as session:
        assert (
            batch_records.take_lease(session, batch_id=batch_id, driver=live, may_replace=lambda *_: False)
            is None
        )
    with pytest.raises(BatchBusyError, match="is being run by"):
        resume_batch(batch_id, settings=batch_settings, registry=fake_registry(), database=database)
    dead = f"{socket.gethostname()}:{_dead_pid()}:gone"
    with write_session(database.session_factory) as session:
        batch_records.release_lease(session, batch_id=batch_id, driver=live, status="interrupted")
        batch_records.take_lease(session, batch_id=batch_id, driver=dead, may_replace=lambda *_: False)
    outcome = resume_batch(batch_id, settings=batch_settings, registry=fake_registry(), database=database)
    assert outcome.status == "succeeded"
    database.dispose()
