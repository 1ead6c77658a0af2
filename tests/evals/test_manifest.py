from __future__ import annotations

from deepscout.evals.manifest import EvalConfig, build_manifest, hash_json_lines


def _config(**changes: object) -> EvalConfig:
    base: dict[str, object] = {
        "dataset": "hotpotqa",
        "dataset_hash": "abc",
        "systems": ("agent", "rag"),
        "model": "smollm2",
        "judge": "smollm2",
        "corpus_collection": "hotpotqa",
        "corpus_hash": "def",
        "budgets": {"max_steps": 3},
    }
    base.update(changes)
    return EvalConfig.model_validate(base)


def test_run_id_is_stable_and_follows_the_config() -> None:
    assert _config().run_id == _config().run_id
    assert _config(model="openai:deepseek-v4-flash").run_id != _config().run_id
    assert _config(budgets={"max_steps": 4}).run_id != _config().run_id
    assert _config(seed=1).run_id != _config().run_id


def test_manifest_records_revision_and_limit_without_changing_the_id() -> None:
    short = build_manifest(_config(), limit=2)
    longer = build_manifest(_config(), limit=20)
    assert short["run_id"] == longer["run_id"] == _config().run_id
    assert short["limit"] == 2 and longer["limit"] == 20
    assert short["git_revision"]
    assert short["config"]["systems"] == ["agent", "rag"]


def test_content_hash_depends_on_content_only() -> None:
    rows = [{"id": "1", "text": "a"}, {"id": "2", "text": "b"}]
    assert hash_json_lines(rows) == hash_json_lines([dict(r) for r in rows])
    assert hash_json_lines(rows) != hash_json_lines(rows[::-1])
