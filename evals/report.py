"""Render an eval run as Markdown and a self-contained HTML page, with PNG charts.

Layout: the pairwise table (win/loss/tie by category with bootstrap 95% intervals, as the DeepSeek-V4
paper lays it out), objective scores, evidence recall, judge calibration, the cost table per system,
charts, and a per-question drill-down with both answers, the verdicts and the sources.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepscout.evals.datasets import EvalItem
from deepscout.evals.records import SystemAnswer, Verdict
from deepscout.evals.stats import Interval
from deepscout.evals.summary import (
    ALL,
    MAX_ORDER_FLIP_RATE,
    CostRow,
    JudgeCalibration,
    PairwiseRow,
    SystemScores,
    cost_rows,
    judge_calibration,
    pairwise_rows,
    system_scores,
)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    charts: tuple[Path, ...]
    summary_json: Path
    tables: tuple[tuple[str, str], ...]
    """(heading, Markdown table) of every summary section, as the report shows them."""


def _pct(interval: Interval) -> str:
    if interval.estimate != interval.estimate:
        return "–"
    return f"{100 * interval.estimate:.1f}% [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def _ratio(value: float) -> str:
    return "–" if value != value else f"{100 * value:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _charts(
    out_dir: Path, pairwise: Sequence[PairwiseRow], costs: Sequence[CostRow], first: str, second: str
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if pairwise:
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(pairwise) + 2))
        labels = [row.category for row in pairwise]
        left = [0.0] * len(pairwise)
        for name, color, values in (
            (f"{first} wins", "#2e7d32", [r.win.estimate for r in pairwise]),
            ("tie", "#9e9e9e", [r.tie.estimate for r in pairwise]),
            (f"{second} wins", "#c62828", [r.loss.estimate for r in pairwise]),
        ):
            ax.barh(labels, values, left=left, color=color, label=name)
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.set_xlim(0, 1)
        ax.invert_yaxis()  # top to bottom in the table's order
        ax.set_xlabel("share of items")
        ax.set_title(f"Pairwise: {first} vs {second}")
        fig.legend(loc="lower center", ncol=3, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        path = out_dir / "pairwise.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    if costs:
        fig, axes = plt.subplots(1, 3, figsize=(9, 3))
        names = [row.system for row in costs]
        for ax, (title, values) in zip(
            axes,
            (
                ("tool calls / question", [r.tool_calls for r in costs]),
                ("tokens computed / question", [r.computed_tokens for r in costs]),
                ("latency s / question", [r.latency_s for r in costs]),
            ),
            strict=True,
        ):
            ax.bar(names, values, color=["#1565c0", "#ef6c00", "#6a1b9a"][: len(names)])
            ax.set_title(title, fontsize=9)
        fig.tight_layout()
        path = out_dir / "cost.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _sections(
    pairwise: Sequence[PairwiseRow],
    scores: Sequence[SystemScores],
    calibration: JudgeCalibration,
    costs: Sequence[CostRow],
    first: str,
    second: str,
) -> list[tuple[str, str]]:
    """(title, markdown table) pairs shared by both renderings."""
    if calibration.informative or not calibration.n:
        pairwise_section = (
            f"Pairwise: {first} vs {second} (win = {first} preferred; 95% Wilson intervals)",
            _table(
                ["category", "n", f"{first} win", f"{first} loss", "tie"],
                [[r.category, r.n, _pct(r.win), _pct(r.loss), _pct(r.tie)] for r in pairwise],
            ),
        )
    else:
        pairwise_section = (
            f"Pairwise: {first} vs {second}: not informative",
            _table(
                ["judged items", "order flips", "limit", "verdict"],
                [
                    [
                        calibration.n,
                        _ratio(calibration.order_flip_rate),
                        _ratio(MAX_ORDER_FLIP_RATE),
                        "the judge picks by position, not content; no win-rate is reported",
                    ]
                ],
            ),
        )
    return [
        pairwise_section,
        (
            "Objective scores (95% Wilson intervals; token F1 bootstrap), by difficulty / hops",
            _table(
                [
                    "system",
                    "items",
                    "n",
                    "exact match",
                    "token F1",
                    "answer contained",
                    "contained, model-written",
                    "contained, fallback",
                    "fallbacks",
                    "errors",
                ],
                [
                    [
                        s.system,
                        s.category,
                        s.n,
                        _pct(s.exact_match),
                        _pct(s.f1),
                        _pct(s.contains),
                        _pct(s.contains_model),
                        _pct(s.contains_fallback),
                        s.fallbacks,
                        s.errors,
                    ]
                    for s in scores
                ],
            ),
        ),
        (
            "Evidence recall (gold supporting documents whose text was in the model's context)",
            _table(
                ["system", "items", "recall", "all found"],
                [[s.system, s.category, _pct(s.evidence_recall), _pct(s.all_evidence_found)] for s in scores],
            ),
        ),
        (
            "Judge calibration",
            _table(
                ["judged items", "order flips", "items one system got right", "judge agrees with objective"],
                [
                    [
                        calibration.n,
                        _ratio(calibration.order_flip_rate),
                        calibration.decisive_items,
                        _ratio(calibration.agreement_with_objective),
                    ]
                ],
            ),
        ),
        (
            "Cost per question",
            _table(
                [
                    "system",
                    "items",
                    "n",
                    "tool calls",
                    "prompt tokens",
                    "tokens computed",
                    "output tokens",
                    "latency s",
                ],
                [
                    [
                        c.system,
                        c.category,
                        c.n,
                        f"{c.tool_calls:.1f}",
                        f"{c.prompt_tokens:.0f}",
                        f"{c.computed_tokens:.0f}",
                        f"{c.output_tokens:.0f}",
                        f"{c.latency_s:.1f}",
                    ]
                    for c in costs
                ],
            ),
        ),
    ]


def _manifest_block(manifest: dict[str, Any]) -> str:
    """The manifest as a fenced JSON block, the fence longer than any backtick run inside."""
    text = json.dumps(manifest, indent=2, sort_keys=True)
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}json\n{text}\n{fence}"


def _tags(item: EvalItem) -> str:
    return ", ".join(f"{key}: {value}" for key, value in item.tags.items())


def _orders(verdict: Verdict) -> tuple[str, str]:
    """What the judge said in each order: its pick (when stored) and its reason."""
    picks = (verdict.winner_first_as_a, verdict.winner_first_as_b)
    labels = [
        f"{verdict.first} as {slot}" + (f", judge picked {pick}" if pick else "")
        for slot, pick in zip(("A", "B"), picks, strict=True)
    ]
    return (
        f"{labels[0]}: {verdict.reason_first_as_a}",
        f"{labels[1]}: {verdict.reason_first_as_b}",
    )


def _answer_text(answer: SystemAnswer) -> str:
    return f"ERROR: {answer.error}" if answer.error else answer.answer


def _per_question(
    items: Sequence[EvalItem], answers: Sequence[SystemAnswer], verdicts: Sequence[Verdict]
) -> Iterator[tuple[EvalItem, list[SystemAnswer], Verdict | None]]:
    """Each answered item in the data set's order, its answers by system name, and its verdict if judged."""
    by_key = {(a.item_id, a.system): a for a in answers}
    verdict_of = {v.item_id: v for v in verdicts}
    systems = sorted({a.system for a in answers})
    for item in items:
        present = [by_key[(item.id, s)] for s in systems if (item.id, s) in by_key]
        if present:
            yield item, present, verdict_of.get(item.id)


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def md_text(text: str) -> str:
    """Data (questions, answers, titles, judge reasons) as inert Markdown text: one line, HTML escaped,
    every Markdown marker backslash-escaped, so no image, link, heading or table cell comes alive."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(" ".join(text.split()), quote=False))


def _drilldown_markdown(
    items: Sequence[EvalItem], answers: Sequence[SystemAnswer], verdicts: Sequence[Verdict]
) -> str:
    parts = []
    for item, present, verdict in _per_question(items, answers, verdicts):
        gold = md_text(" | ".join(item.answers))
        parts.append(f"### {md_text(item.question)}\n\nGold: {gold} ({md_text(_tags(item))})\n")
        for answer in present:
            sources = "; ".join(
                f"\\[{i}\\] {md_text(s.title)}" for i, s in enumerate(answer.sources, start=1)
            )
            kind = " (fallback: quoted sentences)" if answer.status == "fallback" else ""
            parts.append(
                f"**{md_text(answer.system)}**{kind}: {md_text(_answer_text(answer))}\n\n"
                f"Sources: {sources or 'none'}\n"
            )
        if verdict is not None:
            as_a, as_b = _orders(verdict)
            parts.append(
                f"Verdict for {md_text(verdict.first)}: **{verdict.outcome}**"
                f"{' (orders disagreed)' if verdict.order_flip else ''} — {md_text(as_a)} / {md_text(as_b)}\n"
            )
    return "\n".join(parts)


def _markdown_to_html_table(markdown: str) -> str:
    if markdown.startswith("```"):
        return f"<pre>{html.escape(markdown.strip('`').removeprefix('json'))}</pre>"
    rows = [line.strip("|").split(" | ") for line in markdown.splitlines() if not line.startswith("|---")]
    head, body = rows[0], rows[1:]
    out = [
        "<table><thead><tr>",
        *[f"<th>{html.escape(c.strip())}</th>" for c in head],
        "</tr></thead><tbody>",
    ]
    for row in body:
        out += ["<tr>", *[f"<td>{html.escape(c.strip())}</td>" for c in row], "</tr>"]
    return "".join([*out, "</tbody></table>"])


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em;overflow:auto}details{margin:.4em 0}
.win{color:#2e7d32}.loss{color:#c62828}.tie{color:#666}img{max-width:100%}"""


def _drilldown_html(
    items: Sequence[EvalItem], answers: Sequence[SystemAnswer], verdicts: Sequence[Verdict]
) -> str:
    out = []
    for item, present, verdict in _per_question(items, answers, verdicts):
        badge = f' <span class="{verdict.outcome}">[{verdict.outcome}]</span>' if verdict else ""
        out.append(f"<details><summary>{html.escape(item.question)}{badge}</summary>")
        out.append(
            f"<p><b>Gold:</b> {html.escape(' | '.join(item.answers))} ({html.escape(_tags(item))})</p>"
        )
        for answer in present:
            text = _answer_text(answer)
            sources = "".join(
                f"<li>[{i}] {html.escape(s.title)}</li>" for i, s in enumerate(answer.sources, start=1)
            )
            out.append(f"<p><b>{html.escape(answer.system)}</b>: {html.escape(text)}</p><ul>{sources}</ul>")
        if verdict:
            as_a, as_b = _orders(verdict)
            out.append(
                f"<p>Verdict for {html.escape(verdict.first)}: <b>{verdict.outcome}</b>"
                f"{' (orders disagreed)' if verdict.order_flip else ''}<br>"
                f"{html.escape(as_a)}<br>{html.escape(as_b)}</p>"
            )
        out.append("</details>")
    return "\n".join(out)


def write_report(
    *,
    out_dir: Path,
    manifest: dict[str, Any],
    items: Sequence[EvalItem],
    answers: Sequence[SystemAnswer],
    verdicts: Sequence[Verdict],
    first: str = "agent",
    second: str = "rag",
) -> ReportFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    pairwise = pairwise_rows(items, verdicts)
    scores = system_scores(items, answers)
    calibration = judge_calibration(items, answers, verdicts)
    costs = cost_rows(items, answers)
    charts = _charts(out_dir, pairwise, [c for c in costs if c.category == ALL], first, second)
    sections = _sections(pairwise, scores, calibration, costs, first, second)
    manifest_block = _manifest_block(manifest)
    title = f"deepscout eval {manifest.get('run_id', '')}: {first} vs {second}"

    markdown = [f"# {title}\n"]
    for heading, body in sections:
        markdown.append(f"## {heading}\n\n{body}\n")
    markdown += [f"![{p.stem}]({p.name})\n" for p in charts]
    markdown.append("## Per question\n\n" + _drilldown_markdown(items, answers, verdicts))
    markdown.append(f"## Manifest\n\n{manifest_block}\n")
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(markdown), encoding="utf-8")

    images = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in charts
    )
    body = "".join(f"<h2>{html.escape(h)}</h2>{_markdown_to_html_table(t)}" for h, t in sections)
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}<h2>Charts</h2>{images}"
        f"<h2>Per question</h2>{_drilldown_html(items, answers, verdicts)}"
        f"<h2>Manifest</h2>{_markdown_to_html_table(manifest_block)}</body></html>"
    )
    html_path = out_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")

    summary_path = out_dir / "summary.json"
    summary = {
        "manifest": manifest,
        "pairwise": [asdict(r) for r in pairwise],
        "scores": [asdict(s) for s in scores],
        "judge": asdict(calibration),
        "cost": [asdict(c) for c in costs],
    }
    summary_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return ReportFiles(md_path, html_path, tuple(charts), summary_path, tuple(sections))
