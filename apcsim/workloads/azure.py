"""The Azure LLM inference trace (Splitwise, ISCA'24): CSV of TIMESTAMP, ContextTokens, GeneratedTokens.

It carries arrivals and lengths only, no prefix information, so every prompt is request-unique
tokens: prefix caching can only help a request that is preempted and recomputed. An optional
`cache_salt` or `tenant` column (after the three) gives each request its tenant, optional
`priority`, `retention_priority` and `retention_duration_s` columns its priorities (an empty cell:
not set; see apcsim/workloads/priorities.py). It is the workload for questions about scheduling
and preemption under a real arrival pattern.
"""

from __future__ import annotations

import csv
import datetime
from array import array
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from apcsim.core.request import RequestSpec
from apcsim.workloads._common import RowTokens, check_float
from apcsim.workloads._stream import SpecSource
from apcsim.workloads.base import BuildContext, WorkloadConfig, register_workload
from apcsim.workloads.priorities import PRIORITY_FIELDS, trace_priorities, trace_priority_flags
from apcsim.workloads.tracefile import SALT_FIELDS, resolve_trace_path, salt_value, trace_error

_TOKEN_STREAM = 3
_NO_PRIORITIES: dict = {}  # one shared empty dict for the rows without priorities (never mutated)
_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass
class AzureConfig(WorkloadConfig):
    name: str = "azure"
    path: str = "azure_llm_2023/AzureLLMInferenceTrace_conv.csv"  # or ..._code.csv
    time_scale: float = 1.0  # multiplies every arrival time: 0.5 replays twice as fast


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch (UTC) of '2023-11-16 18:17:03.9799600'; all 7 fraction digits kept."""
    head, _, frac = text.strip().partition(".")
    if frac and not frac.isdigit():
        raise ValueError(text)
    return _epoch_second(head) + (float("0." + frac) if frac else 0.0)


@lru_cache(maxsize=1)  # rows come in time order, a few a second: the ISO parse is most of a row's cost
def _epoch_second(head: str) -> float:
    """Seconds since the epoch (UTC) of a whole-second ISO time '2023-11-16 18:17:03'."""
    return datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc).timestamp()


@register_workload("azure", AzureConfig)
def build(cfg: AzureConfig, ctx: BuildContext) -> SpecSource:
    scale = check_float(cfg, "time_scale", 0.0, inclusive=False)
    path = resolve_trace_path(cfg.path)
    try:
        return _read(cfg, ctx, path, scale)
    except UnicodeDecodeError as e:  # found by the fuzz test: binary junk is a trace error
        raise trace_error(path, None, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise trace_error(path, None, f"malformed CSV ({e})") from None


def _read(cfg: AzureConfig, ctx: BuildContext, path, scale: float) -> SpecSource:
    """One pass over the rows, checking each and keeping its numbers (a few bytes a row: the
    run needs the count and the order before it starts); a prompt's tokens are made when read
    (apcsim.core.lazy_prompt)."""
    times, inputs, outputs = array("d"), array("q"), array("q")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != list(_COLUMNS):
            raise trace_error(path, 1, f"expected a header {','.join(_COLUMNS)}, got {header!r}")
        salt_cols = {h.strip(): i for i, h in enumerate(header) if h.strip() in SALT_FIELDS}
        prio_cols = {h.strip(): i for i, h in enumerate(header) if h.strip() in PRIORITY_FIELDS}
        salts: list = []
        priorities: list = []
        for row in reader:
            if cfg.num_requests is not None and len(times) >= cfg.num_requests:
                break
            line = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) < 3 or len(row) > len(header):
                raise trace_error(path, line, f"expected {len(header)} columns as in the header, got {len(row)}")
            try:
                t = parse_timestamp(row[0])
            except ValueError:
                raise trace_error(path, line, f"bad TIMESTAMP {row[0]!r}") from None
            try:
                n_in, n_out = int(row[1]), int(row[2])
            except ValueError:
                raise trace_error(path, line, f"token counts must be integers, got {row[1]!r}, {row[2]!r}") from None
            if n_in < 1 or n_out < 1:
                # GeneratedTokens 0 used to become 1 without a word: every served request emits a token.
                raise trace_error(path, line, f"need ContextTokens >= 1 and GeneratedTokens >= 1, got {n_in}, {n_out}")
            if times and t < times[-1]:
                raise trace_error(path, line, "timestamps must not decrease")
            times.append(t)
            inputs.append(n_in)
            outputs.append(n_out)
            if salt_cols:
                cells = {k: row[i].strip() for k, i in salt_cols.items() if i < len(row)}
                salts.append(salt_value(cells, lambda msg, _l=line: trace_error(path, _l, msg)))
            else:
                salts.append(None)  # what salt_value gives a row without the columns
            if prio_cols:
                cells = {k: row[i] for k, i in prio_cols.items() if i < len(row)}
                priorities.append(trace_priorities(cells, lambda msg, _l=line: trace_error(path, _l, msg), cells=True)
                                  or _NO_PRIORITIES)
            else:
                priorities.append(_NO_PRIORITIES)
    if not times:
        raise trace_error(path, None, "no requests in trace")
    arrivals = (np.frombuffer(times, dtype=np.float64) - times[0]) * scale
    tokens = RowTokens(ctx.seed, _TOKEN_STREAM, ctx.vocab_size)
    own_salts = any(salt is not None for salt in salts)

    def make(i: int, **fields) -> RequestSpec:
        own = {"arrival_time": float(arrivals[i])}
        if own_salts:
            own["cache_salt"] = salts[i]
        own.update(priorities[i])
        own.update(fields)  # the run's rules (Poisson times, tenants, classes) over the trace's
        return RequestSpec(request_id=f"az-{i}", prompt_token_ids=tokens.prompt(i, inputs[i]), output_len=outputs[i],
                           content_ids=tokens.content_ids(i, inputs[i]), **own)

    return SpecSource(count=len(times), make=make, min_tokens=min(a + b for a, b in zip(inputs, outputs)),
                      arrival_times=arrivals, own_salts=own_salts, **trace_priority_flags(priorities, "az"))
