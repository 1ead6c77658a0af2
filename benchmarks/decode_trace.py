"""Where a decode step's GPU time goes, from the Chrome trace of graph-replayed steps that `--profile --trace
PATH` writes (`v4_flash_full.py`, `long_context.py`).

Under programmatic dependent launch a kernel starts while its predecessor still runs and waits for it in
`griddepcontrol.wait`, so a kernel's traced duration includes that wait (the durations of a step sum to more
than the step). Each kernel's own time is therefore counted from its predecessor's end: `end - max(start,
previous end)`, the kernels of one device taken in start order. Reported per step (the trace's kernel time
divided by `--steps`): the span from the first kernel's start to the last one's end, the time some kernel
ran, the idle rest, its largest gaps (with the kernels on either side) and the idle time before each kernel
name, and every kernel name's launches, own time a call and own time a step, largest first.

Prints a table and writes `benchmarks/results/decode_trace.json` (or `--json PATH`). Any machine.

    python benchmarks/decode_trace.py trace.json.gz --steps 3
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

_GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
_NAME_CHARS = 70


def device_events(trace: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The GPU events (kernels, copies, memsets) of the trace's first device, in start order."""
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    gpu = [e for e in events if e.get("ph") == "X" and e.get("cat") in _GPU_CATEGORIES]
    devices = {e.get("args", {}).get("device") for e in gpu} - {None}
    if not devices:
        raise SystemExit("the trace holds no GPU kernels (was it written with --profile --trace on CUDA?)")
    first = min(devices)
    return sorted((e for e in gpu if e.get("args", {}).get("device") == first), key=lambda e: e["ts"])


def summarise(events: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Span, busy and idle time a step, the largest gaps, and own time per kernel name (see the docstring)."""
    per_name: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    idle_before: defaultdict[str, float] = defaultdict(float)
    gaps: list[tuple[float, str, str]] = []
    busy = 0.0
    previous_end: float | None = None
    previous_name = ""
    for event in events:
        start, end = event["ts"], event["ts"] + event["dur"]
        begin = start if previous_end is None else max(start, previous_end)
        name = event["name"][:_NAME_CHARS]
        if previous_end is not None and start > previous_end:
            gaps.append((start - previous_end, previous_name, name))
            idle_before[name] += start - previous_end
        if previous_end is None or end >= previous_end:
            previous_name = name
        own = max(end - begin, 0.0)
        busy += own
        row = per_name[name]
        row[0] += 1
        row[1] += own
        previous_end = end if previous_end is None else max(previous_end, end)
    span = events[-1]["ts"] + events[-1]["dur"] - events[0]["ts"]
    kernels = [
        {
            "name": name,
            "launches_per_step": round(count / steps, 1),
            "own_us_per_call": round(own / count, 2),
            "own_ms_per_step": round(own / steps / 1000, 3),
        }
        for name, (count, own) in sorted(per_name.items(), key=lambda kv: -kv[1][1])
    ]
    return {
        "steps": steps,
        "launches_per_step": round(len(events) / steps, 1),
        "span_ms_per_step": round(span / steps / 1000, 3),
        "busy_ms_per_step": round(busy / steps / 1000, 3),
        "idle_ms_per_step": round((span - busy) / steps / 1000, 3),
        "largest_gaps_us": [round(g, 1) for g, _, _ in sorted(gaps, reverse=True)[:12]],
        "largest_gaps": [
            {"us": round(g, 1), "after": before, "before": after}
            for g, before, after in sorted(gaps, reverse=True)[:12]
        ],
        "idle_before_us_per_step": {
            name: round(idle / steps, 1)
            for name, idle in sorted(idle_before.items(), key=lambda kv: -kv[1])[:12]
        },
        "kernels": kernels,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trace", type=Path, help="Chrome trace JSON (.json or .json.gz)")
    parser.add_argument("--steps", type=int, default=3, help="decode steps the trace holds (profile: 3)")
    parser.add_argument("--rows", type=int, default=30, help="kernel names printed")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "decode_trace.json")
    opts = parser.parse_args()
    if opts.steps < 1:
        parser.error(f"--steps takes a positive count of decode steps, got {opts.steps}")
    opener = gzip.open if opts.trace.suffix == ".gz" else open
    try:
        with opener(opts.trace, "rt") as f:
            trace = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f"cannot read the trace {opts.trace}: {error}") from None
    result = summarise(device_events(trace), opts.steps)
    print(
        f"{result['launches_per_step']} launches, span {result['span_ms_per_step']} ms, busy "
        f"{result['busy_ms_per_step']} ms, idle {result['idle_ms_per_step']} ms a step; largest gaps (us) "
        f"{result['largest_gaps_us']}"
    )
    for gap in result["largest_gaps"]:
        print(f"gap {gap['us']:>7} us after {gap['after'][:40]!r} before {gap['before'][:40]!r}")
    print("idle before each kernel name (us a step):", result["idle_before_us_per_step"])
    print(f"{'kernel':{_NAME_CHARS}} {'a step':>7} {'us/call':>8} {'ms/step':>8}")
    for row in result["kernels"][: opts.rows]:
        print(
            f"{row['name']:{_NAME_CHARS}} {row['launches_per_step']:>7} {row['own_us_per_call']:>8} "
            f"{row['own_ms_per_step']:>8}"
        )
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(
        json.dumps({"benchmark": "decode_trace", "trace": str(opts.trace), **result}, indent=2) + "\n"
    )
    print(f"wrote {opts.json}")


if __name__ == "__main__":
    main()
