"""Run an evaluation: both systems on every item, then the pairwise judge, everything stored as it comes.

The run id derives from the configuration (see :mod:`deepscout.evals.manifest`): rerunning the same
configuration skips what is stored and does the rest; a changed configuration gets a new run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.errors import DeepscoutError
from deepscout.evals import store
from deepscout.evals.datasets import Dataset, EvalItem, load_dataset
from deepscout.evals.judges import PairwiseJudge
from deepscout.evals.manifest import EvalConfig, build_manifest, hash_json_lines
from deepscout.evals.records import SystemAnswer, Verdict
from deepscout.evals.systems import AgentSystem, RagSystem, System
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import Database, open_database, write_session
from deepscout.memory.schemas import CorpusDocument
from deepscout.model_runtime.chat import ChatModel, load_chat_model
from deepscout.settings import Settings
from deepscout.tools.retrieval import RetrievalKind, build_retriever

logger = logging.getLogger(__name__)

SYSTEMS = ("agent", "rag")
Progress = Callable[[str, int, int], None]
"""``progress(label, done, total)``."""


class EvalInputError(DeepscoutError, ValueError):
    """The eval cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class EvalOptions:
    dataset: Path
    systems: tuple[str, ...] = SYSTEMS
    model: str = "smollm2"
    judge: str | None = None
    """Chat model spec of the pairwise judge; None skips pairwise judging (objective scores only)."""
    limit: int | None = None
    concurrency: int = 1
    search: str = "local"
    retrieval: RetrievalKind = "bm25"
    top_k: int = 5
    budgets: Budgets = field(default_factory=Budgets)
    model_queries: int = ResearchOptions.model_fields["queries_per_step"].default
    """Queries the agent's model may propose per round (0: the agent forms its queries alone)."""
    answer_max_tokens: int = 256
    seed: int = 0


@dataclass(frozen=True)
class EvalOutcome:
    """What one ``run_eval`` call did; counts cover the items within ``--limit`` only."""

    run_id: str
    items: int
    answered: int
    """Answers written by this call (items × systems, less those stored by an earlier call)."""
    skipped: int
    """Answers already stored by an earlier call of the same configuration."""
    judged: int
    failures: list[str]
    """One line per answer or verdict that failed (the item and system, and the error)."""


def _check(options: EvalOptions, dataset: Dataset) -> None:
    unknown = set(options.systems) - set(SYSTEMS)
    if unknown or not options.systems:
        raise EvalInputError(f"unknown systems {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    if options.judge and len(options.systems) != 2:
        raise EvalInputError("pairwise judging compares exactly two systems, e.g. --systems agent,rag")
    if dataset.needs_web and options.search == "local":
        raise EvalInputError(
            f"{dataset.name} has no corpus, so it runs only with web search (--search web), which needs the "
            "network; skipped"
        )
    if options.limit is not None and options.limit < 1:
        raise EvalInputError("--limit must be at least 1")
    if options.concurrency < 1:
        raise EvalInputError("--concurrency must be at least 1")


def _ingest(
    dataset: Dataset, corpus: CorpusIndex, progress: Progress | None
) -> tuple[str | None, str | None]:
    """The data set's corpus as its own collection (idempotent): both systems search this snapshot."""
    if dataset.corpus is None:
        return None, None
    collection = f"eval-{dataset.name}"
    docs = [CorpusDocument(doc_id=d.id, title=d.title, text=d.text) for d in dataset.corpus]
    report = corpus.add(
        docs,
        collection=collection,
        description=f"corpus of the {dataset.name} eval set",
        progress=(lambda label, done, total: progress(label, done, total or len(docs))) if progress else None,
        total=len(docs),
    )
    return collection, report.content_hash


def _config(
    options: EvalOptions, dataset: Dataset, dataset_hash: str, collection: str | None, corpus_hash: str | None
) -> EvalConfig:
    return EvalConfig(
        dataset=dataset.name,
        dataset_hash=dataset_hash,
        systems=options.systems,
        model=options.model,
        judge=options.judge,
        corpus_collection=collection,
        corpus_hash=corpus_hash,
        retrieval=options.retrieval,
        top_k=options.top_k,
        budgets=options.budgets.model_dump(mode="json")
        | {"answer_max_tokens": options.answer_max_tokens, "model_queries": options.model_queries},
        sampling={"temperature": 0.0, "search": options.search},
        seed=options.seed,
    )


def run_eval(
    options: EvalOptions,
    *,
    settings: Settings,
    progress: Progress | None = None,
    chat: ChatModel | None = None,
    judge_chat: ChatModel | None = None,
) -> EvalOutcome:
    """Answer every item with every system, judge the pairs, store everything; resumable by config."""
    dataset = load_dataset(options.dataset)
    _check(options, dataset)
    # The hash covers the whole data set, so a longer --limit extends the same run.
    dataset_hash = hash_json_lines([item.to_json() for item in dataset.items])
    db = open_database(settings)
    try:
        return _run(
            options, dataset.limited(options.limit), dataset_hash, db, settings, progress, chat, judge_chat
        )
    finally:
        db.dispose()


def _run(
    options: EvalOptions,
    dataset: Dataset,
    dataset_hash: str,
    db: Database,
    settings: Settings,
    progress: Progress | None,
    chat: ChatModel | None,
    judge_chat: ChatModel | None,
) -> EvalOutcome:
    corpus = CorpusIndex(db.session_factory)
    collection, corpus_hash = _ingest(dataset, corpus, progress)
    config = _config(options, dataset, dataset_hash, collection, corpus_hash)
    run_id = config.run_id
    with write_session(db.session_factory) as session:
        store.ensure_eval_run(
            session,
            run_id=run_id,
            dataset=dataset.name,
            config=config.model_dump(mode="json"),
            manifest=build_manifest(config, limit=options.limit),
            items=dataset.items,
        )
    with db.session_factory() as session:
        ids = {item.id for item in dataset.items}  # a stored longer run may hold items past --limit
        done = {key for key in store.answered(session, run_id=run_id) if key[0] in ids}
        verdicts_done = store.judged(session, run_id=run_id)

    model = chat or load_chat_model(options.model, settings=settings)
    budgets = options.budgets
    context_tokens = budgets.context_tokens(model.context_window)  # checked once, for both systems
    systems: dict[str, System] = {
        "agent": AgentSystem(
            settings=settings,
            database=db,
            chat=model,
            options=ResearchOptions(
                model=options.model,
                search=options.search,  # type: ignore[arg-type]
                budgets=budgets,
                collection=collection,
                retrieval=options.retrieval,
                hits_per_query=options.top_k,  # the first round reads what the baseline reads
                queries_per_step=options.model_queries,
                answer_max_tokens=options.answer_max_tokens,
            ),
            run_id=run_id,
        ),
        "rag": RagSystem(
            chat=model,
            corpus=corpus,
            retriever=build_retriever(options.retrieval, corpus, db.session_factory, settings.cache_dir),
            collection=collection,
            top_k=options.top_k,
            context_tokens=context_tokens,
            answer_max_tokens=options.answer_max_tokens,
            wall_time_s=budgets.wall_time_s,
        ),
    }
    todo = [(item, name) for item in dataset.items for name in options.systems if (item.id, name) not in done]
    total = len(dataset.items) * len(options.systems)
    failures: list[str] = []
    finished = total - len(todo)
    if progress:
        progress("Answering", finished, total)

    def answer(work: tuple[EvalItem, str]) -> SystemAnswer:
        item, name = work
        try:
            return systems[name].answer(item)
        except Exception as error:  # one item's failure is recorded, the run goes on
            logger.exception("system %s failed on item %s", name, item.id)
            return SystemAnswer(
                item_id=item.id, system=name, answer="", error=f"{type(error).__name__}: {error}"
            )

    def store_answer(result: SystemAnswer) -> None:
        nonlocal finished
        if result.error:
            failures.append(f"{result.system} on {result.item_id}: {result.error}")
        try:
            with write_session(db.session_factory) as session:
                store.save_answer(session, run_id=run_id, answer=result)
        except IntegrityError:  # another process stored it meanwhile
            pass
        finished += 1
        if progress:
            progress("Answering", finished, total)

    # An embedded model computes on this machine's cores and is not shared between threads: its items run
    # one by one on this thread, so Ctrl-C stops the item in flight at once. Concurrency is for the
    # backends that say one instance serves several (remote servers); on Ctrl-C the queued items are
    # cancelled and only those in flight are waited for.
    workers = options.concurrency if model.serves_threads_concurrently else 1
    if workers == 1:
        for work in todo:
            store_answer(answer(work))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for future in as_completed([pool.submit(answer, work) for work in todo]):
                store_answer(future.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    judged = 0
    if options.judge:
        judge_model = judge_chat or (model if options.judge == options.model else None)
        judged = _judge(options, dataset, db, settings, run_id, verdicts_done, judge_model, progress)
    return EvalOutcome(
        run_id=run_id,
        items=len(dataset.items),
        answered=total - len(done),
        skipped=len(done),
        judged=judged,
        failures=failures,
    )


def _judge(
    options: EvalOptions,
    dataset: Dataset,
    db: Database,
    settings: Settings,
    run_id: str,
    verdicts_done: set[str],
    judge_model: ChatModel | None,
    progress: Progress | None,
) -> int:
    assert options.judge is not None
    first, second = options.systems
    with db.session_factory() as session:
        _, _, answers, _ = store.load_run(session, run_id=run_id)
    by_key = {(a.item_id, a.system): a for a in answers}
    todo = [
        item
        for item in dataset.items
        if item.id not in verdicts_done and (item.id, first) in by_key and (item.id, second) in by_key
    ]
    if not todo:
        return 0
    judge = PairwiseJudge(judge_model or load_chat_model(options.judge, settings=settings))
    for done, item in enumerate(todo, start=1):
        a, b = by_key[(item.id, first)], by_key[(item.id, second)]
        result = judge.judge(
            question=item.question,
            gold=" | ".join(item.answers),
            first=a.answer or f"(no answer: {a.error})",
            second=b.answer or f"(no answer: {b.error})",
        )
        verdict = Verdict(
            item_id=item.id,
            first=first,
            second=second,
            outcome=result.outcome,
            order_flip=result.order_flip,
            reason_first_as_a=result.first_as_a.reason,
            reason_first_as_b=result.first_as_b.reason,
            winner_first_as_a=result.first_as_a.winner,
            winner_first_as_b=result.first_as_b.winner,
        )
        try:
            with write_session(db.session_factory) as session:
                store.save_verdict(session, run_id=run_id, verdict=verdict)
        except IntegrityError:
            pass
        if progress:
            progress("Judging", done, len(todo))
    return len(todo)
