"""A batch driver process for the crash tests (an entry point: it builds the settings).

``python batch_driver.py HOME DATABASE_URL run INPUT OUT CONCURRENCY`` or ``... resume BATCH_ID CONCURRENCY``;
the chat model is the fake one (``fake_research_model.py``), each call taking ``DELAY_S``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_research_model import fake_registry

from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.batch.batch_api import resume_batch, run_batch
from deepscout.batch.batch_options import BatchOptions
from deepscout.process import configure_process
from deepscout.settings import Settings

DELAY_S = 0.02


def main(home: str, database_url: str, command: str, *rest: str) -> None:
    configure_process()
    settings = Settings(home=Path(home), database_url=database_url, model="fake")
    registry = fake_registry(delay_s=DELAY_S)
    if command == "run":
        input_path, out, concurrency = rest
        options = BatchOptions(
            research=ResearchOptions(budgets=Budgets(max_steps=1), min_grounding=0.0),
            concurrency=int(concurrency),
            retry_delay_s=0.0,
        )
        outcome = run_batch(
            Path(input_path), out_dir=Path(out), settings=settings, options=options, registry=registry
        )
    else:
        batch_id, concurrency = rest
        outcome = resume_batch(batch_id, settings=settings, concurrency=int(concurrency), registry=registry)
    print(outcome.status, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
