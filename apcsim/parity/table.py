"""The parity table: one row per replay, as markdown (docs/parity.md) and CSV."""

from __future__ import annotations

import csv
import io

from apcsim.parity.harness import Replay

COLUMNS = ["scenario", "semantics", "requests", "steps (apcsim/vllm)", "queries", "hits", "hit rate",
           "preemptions", "requests alike", "identical", "first difference"]


def _first_admissions(steps: list[dict]) -> dict[str, tuple[int, int]]:
    """request -> (step, cached tokens) of its first admission."""
    out: dict[str, tuple[int, int]] = {}
    for s in steps:
        for rid, hit in s["admitted"].items():
            out.setdefault(rid, (s["step"], hit))
    return out


def requests_alike(r: Replay) -> tuple[int, int]:
    """(requests admitted at the same step with the same prefix hit on both sides, requests)."""
    a, v = _first_admissions(r.recording.steps), _first_admissions(r.vllm["steps"])
    return sum(a[k] == v.get(k) for k in a), len(r.recording.requests)


def _pair(x, y, fmt="{}") -> str:
    return fmt.format(x) if x == y else f"{fmt.format(x)} / {fmt.format(y)}"


def rows(replays: list[Replay]) -> list[list[str]]:
    out = []
    for r in replays:
        c, (alike, n) = r.comparison, requests_alike(r)
        a, v = c.apcsim, c.vllm
        out.append([
            r.name, r.recording.config["semantics"], str(n), _pair(a.steps, v.steps),
            _pair(a.queries, v.queries), _pair(a.hits, v.hits), _pair(a.hit_rate, v.hit_rate, "{:.4f}"),
            _pair(a.preemptions, v.preemptions), f"{alike}/{n}", "yes" if c.identical else "**no**",
            "" if c.identical else f"step {c.first_diff}: {c.diff}",
        ])
    return out


def markdown(replays: list[Replay]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(replays)]
    return "\n".join(lines) + "\n"


def to_csv(replays: list[Replay]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(COLUMNS)
    w.writerows(rows(replays))
    return buf.getvalue()
