"""The summary of a batch job: totals (records, failures, skipped input, tokens prefilled vs reused, cost,
wall time) and one row per record, as Markdown (``summary.md``) and as HTML (``summary.html``, the same
Markdown through the project's sanitising renderer: questions, answers and metadata are untrusted)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment

from deepscout.batch.output_files import write_atomically

TOKEN_FIELDS = ("prompt_tokens", "reused_tokens", "computed_tokens", "output_tokens")
EXCERPT_CHARS = 120
_PAGE = Environment(autoescape=True).from_string(
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>'
    "<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top}"
    "</style></head><body>\n{{ body }}\n</body></html>\n"
)


@dataclass(frozen=True)
class Totals:
    records: int
    succeeded: int
    failed: int
    skipped: int
    tokens: dict[str, int]
    tool_calls: int
    cost: float
    wall_s: float

    @property
    def reuse_ratio(self) -> float:
        prompt = self.tokens["prompt_tokens"]
        return self.tokens["reused_tokens"] / prompt if prompt else 0.0


def totals(results: Sequence[dict[str, Any]], problems: Sequence[dict[str, Any]]) -> Totals:
    tokens = {name: sum(int(r.get("usage", {}).get(name, 0)) for r in results) for name in TOKEN_FIELDS}
    return Totals(
        records=len(results),
        succeeded=sum(1 for r in results if r["status"] == "succeeded"),
        failed=sum(1 for r in results if r["status"] == "failed"),
        skipped=len(problems),
        tokens=tokens,
        tool_calls=sum(int(r.get("usage", {}).get("tool_calls", 0)) for r in results),
        cost=round(sum(float(r.get("cost") or 0.0) for r in results), 6),
        wall_s=round(sum(float(r.get("wall_s") or 0.0) for r in results), 3),
    )


def _cell(value: object) -> str:
    """A Markdown table cell: one line, pipes and backslashes escaped, brackets kept literal."""
    text = " ".join(str(value).split())
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    for char in ("\\", "|", "[", "]", "<", ">", "*", "_", "`"):
        text = text.replace(char, "\\" + char)
    return text


def summary_markdown(
    batch_id: str, results: Sequence[dict[str, Any]], problems: Sequence[dict[str, Any]]
) -> str:
    total = totals(results, problems)
    lines = [
        f"# Batch {batch_id}",
        "",
        "| records | succeeded | failed | skipped input | prompt tokens | reused | computed | output | "
        "reuse ratio | tool calls | cost | record wall time s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {total.records} | {total.succeeded} | {total.failed} | {total.skipped} | "
        + " | ".join(str(total.tokens[name]) for name in TOKEN_FIELDS)
        + f" | {total.reuse_ratio:.2f} | {total.tool_calls} | {total.cost:.4f} | {total.wall_s:.1f} |",
        "",
        "## Records",
        "",
        "| line | id | status | wall s | attempts | prompt | reused | output | cost | question "
        "| answer or error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: int(r["line"])):
        usage = r.get("usage", {})
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["line"]),
                    _cell(r["id"]),
                    r["status"],
                    f"{float(r.get('wall_s') or 0):.1f}",
                    str(r.get("attempts", 1)),
                    str(usage.get("prompt_tokens", 0)),
                    str(usage.get("reused_tokens", 0)),
                    str(usage.get("output_tokens", 0)),
                    f"{float(r.get('cost') or 0):.4f}",
                    _cell(r["question"]),
                    _cell(r.get("answer") if r["status"] == "succeeded" else r.get("error")),
                ]
            )
            + " |"
        )
    if problems:
        lines += ["", "## Skipped input records", "", "| line | reason |", "|---|---|"]
        lines += [f"| {p['line']} | {_cell(p['reason'])} |" for p in problems]
    return "\n".join(lines) + "\n"


def write_summary(
    out_dir: Path, batch_id: str, results: Sequence[dict[str, Any]], problems: Sequence[dict[str, Any]]
) -> Totals:
    """Write ``summary.md``, ``summary.html`` and ``summary.json`` (the totals) into ``out_dir``."""
    from deepscout.ui.rendering import render_markdown

    markdown = summary_markdown(batch_id, results, problems)
    write_atomically(out_dir / "summary.md", markdown)
    page = _PAGE.render(title=f"Batch {batch_id}", body=render_markdown(markdown))
    write_atomically(out_dir / "summary.html", page)
    total = totals(results, problems)
    figures = {
        "batch_id": batch_id,
        **{name: getattr(total, name) for name in ("records", "succeeded", "failed", "skipped")},
        "tokens": total.tokens,
        "reuse_ratio": round(total.reuse_ratio, 4),
        "tool_calls": total.tool_calls,
        "cost": total.cost,
        "record_wall_s": total.wall_s,
    }
    write_atomically(out_dir / "summary.json", json.dumps(figures, indent=2) + "\n")
    return total
