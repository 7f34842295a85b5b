"""Mooncake-format traces: JSONL of timestamp, input_length, output_length, hash_ids, and an
optional `cache_salt` (or `tenant`) per request: requests with different salts never share blocks.
Optional `priority` (an integer, lower is scheduled first under scheduler=priority),
`retention_priority` (0..100) and `retention_duration_s` (seconds) set the request's priorities
(see apcsim/workloads/priorities.py).

Each hash id names one `hash_block_size`-token block of the prompt. We map an id to a block of
pseudo-random tokens that depends only on (seed, id), so two requests that share an id share
those tokens, for any engine block size that divides `hash_block_size`. The serving core chains
block keys itself, so the ids may be prefix hashes (Mooncake: an id always has the same
predecessor) or per-block content hashes (the GMI trace): a block hits only if its whole prefix
does. A trailing partial block takes the first tokens of its id's block.

The same reader takes the GMI/LMBench trace with `hash_block_size=32 timestamp_unit=ns
strict_lengths=false` (its lengths fit 32-token blocks only approximately).

`length_scale` shrinks (or stretches) every request while keeping the trace's reuse exact: a hash
id becomes `hash_block_size * length_scale` tokens, a prompt ceil(input_length * length_scale)
tokens and an output round(output_length * length_scale) (at least 1). Which requests share which
blocks, in which order, is unchanged, so a whole trace whose reuse is long-range can be replayed
where its full lengths would not fit (a GPU run of a few minutes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from apcsim.core.content_ids import ContentIds
from apcsim.core.lazy_prompt import LazyPrompt
from apcsim.core.request import RequestSpec
from apcsim.errors import ConfigError
from apcsim.mathutil import cdiv
from apcsim.workloads._common import HashedRows, check_float, check_int, readonly, unique_tokens
from apcsim.workloads._stream import SpecSource
from apcsim.workloads.base import BuildContext, WorkloadConfig, register_workload
from apcsim.workloads.priorities import PRIORITY_FIELDS, trace_priorities, trace_priority_flags
from apcsim.workloads.tracefile import SALT_FIELDS, resolve_trace_path, salt_value, trace_error

_REQUIRED = ("timestamp", "input_length", "output_length", "hash_ids")
_KNOWN = _REQUIRED + SALT_FIELDS + PRIORITY_FIELDS
_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_HASH_STREAM = 1  # token streams of this module, so they differ from other workloads'
_PAD_STREAM = 2
_CONTENT_TABLE = f"mooncake/{_HASH_STREAM}"  # what hash ids name: hashed_blocks' tokens of this stream


@dataclass
class MooncakeConfig(WorkloadConfig):
    name: str = "mooncake"
    path: str = "mooncake/synthetic_trace.jsonl"  # relative: cwd, then the bundled traces/
    hash_block_size: int = 512
    timestamp_unit: str = "ms"
    time_scale: float = 1.0  # multiplies every arrival time: 0.5 replays twice as fast
    # multiplies every length, hash blocks included (1/16: 512-token blocks become 32 tokens);
    # hash_block_size * length_scale must be a whole number of tokens
    length_scale: float = 1.0
    # Require len(hash_ids) == ceil(input_length / hash_block_size). When false, a prompt is its
    # blocks cut to input_length, padded with request-unique tokens if the blocks fall short.
    strict_lengths: bool = True


@dataclass
class _Row:
    lineno: int
    t: float
    input_length: int
    output_length: int
    hash_ids: list
    salt: Optional[str] = None
    priorities: dict = field(default_factory=dict)  # RequestSpec keywords: priority, retention_*


# Every served request emits at least the prefill's token. A 0 is refused unless the user opted
# into approximate lengths (strict_lengths=false), where it is served as 1 (it used to be, silently).
_NO_EMPTY_OUTPUT = " (a request emits at least one token; strict_lengths=false serves it as 1)"


def _int_field(rec: dict, key: str, lo: int, where, why: str = "") -> int:
    v = rec.get(key)
    if isinstance(v, str):  # GMI writes its ns timestamps as strings
        try:
            v = int(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or int(v) != v or v < lo:
        raise where(f"{key} must be an integer >= {lo}, got {v!r}{why if v == 0 else ''}")
    return int(v)


class _StrictJSONError(ValueError):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    """json.loads keeps the last of two equal keys without a word; a trace that says a thing twice is refused."""
    d = dict(pairs)
    if len(d) < len(pairs):  # the slow search only for a row that has a duplicate
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise _StrictJSONError(f"duplicate field {k!r}")
            seen.add(k)
    return d


def _no_constant(name: str):
    """NaN and Infinity are Python's JSON extension, not JSON; as a timestamp they used to pass."""
    raise _StrictJSONError(f"not valid JSON ({name} is not a JSON number)")


def read_rows(path, unit: str, limit: Optional[int], strict: bool = True) -> list[_Row]:
    rows: list[_Row] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not raw.strip():
                continue

            def where(msg, _l=lineno):
                return trace_error(path, _l, msg)

            try:
                rec = json.loads(raw, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise where(f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
            except _StrictJSONError as e:
                raise where(str(e)) from None
            if not isinstance(rec, dict):
                raise where("expected a JSON object")
            for key in _REQUIRED:
                if key not in rec:
                    raise where(f"missing field {key!r}")
            unknown = sorted(k for k in rec if k not in _KNOWN)
            if unknown:
                raise where(f"unknown field {unknown[0]!r} (known: {', '.join(_KNOWN)})")
            ts = rec["timestamp"]
            if isinstance(ts, float):  # fractional timestamps are fine, negative or not finite (1e400) are not
                if not (ts >= 0 and math.isfinite(ts)):
                    raise where(f"timestamp must be a finite number >= 0, got {ts!r}")
            else:
                ts = _int_field(rec, "timestamp", 0, where)
            ids = rec["hash_ids"]
            # type(h) is int: JSON gives no int subclass but bool (true/false), which is refused
            if not isinstance(ids, list) or not ids or set(map(type, ids)) != {int}:
                raise where("hash_ids must be a non-empty list of integers")
            if min(ids) < -(2**63) or max(ids) >= 2**63:
                raise where("hash_ids must fit in 64-bit signed integers")
            # A record of the required fields alone (the common case) has no salt or priorities:
            # what salt_value and trace_priorities give it, without their per-row calls.
            plain = len(rec) == len(_REQUIRED)
            rows.append(_Row(lineno, ts * _UNITS[unit], _int_field(rec, "input_length", 1, where),
                             _int_field(rec, "output_length", 1 if strict else 0, where, _NO_EMPTY_OUTPUT), ids,
                             None if plain else salt_value(rec, where), {} if plain else trace_priorities(rec, where)))
    return rows


@register_workload("mooncake", MooncakeConfig)
def build(cfg: MooncakeConfig, ctx: BuildContext) -> SpecSource:
    hbs = check_int(cfg, "hash_block_size", 1)
    scale = check_float(cfg, "time_scale", 0.0, inclusive=False)
    ls = check_float(cfg, "length_scale", 0.0, inclusive=False)
    block = hbs * ls  # tokens per hash id once scaled
    if abs(block - round(block)) > 1e-9 or round(block) < 1:
        raise ConfigError(f"workload.hash_block_size * workload.length_scale must be a whole number of tokens >= 1, "
                          f"got {hbs} * {cfg.length_scale} = {block:g}")
    block = int(round(block))
    if cfg.timestamp_unit not in _UNITS:
        raise ConfigError(f"workload.timestamp_unit must be one of {', '.join(_UNITS)}; got {cfg.timestamp_unit!r}")
    path = resolve_trace_path(cfg.path)
    rows = read_rows(path, cfg.timestamp_unit, cfg.num_requests, cfg.strict_lengths)
    if not rows:
        raise trace_error(path, None, "no requests in trace")
    t0 = rows[0].t
    for prev, row in zip(rows, rows[1:]):
        if row.t < prev.t:
            raise trace_error(path, row.lineno, "timestamps must not decrease")
    for row in rows if cfg.strict_lengths else ():
        expected = cdiv(row.input_length, hbs)
        if len(row.hash_ids) != expected:
            raise trace_error(path, row.lineno, f"{len(row.hash_ids)} hash_ids for input_length "
                              f"{row.input_length}, expected {expected} with hash_block_size={hbs} "
                              "(strict_lengths=false accepts it)")

    # An id's `block` tokens are a hash of (seed, stream, id) (hashed_blocks), made only where a
    # prompt's tokens are read (TablePrompt), never as a table of the trace's distinct blocks.
    # int64 [total ids]: every row's hash ids, row i at [offsets[i], offsets[i + 1]); a request's
    # ContentIds and its prompt hold views of it
    all_ids = readonly(np.fromiter((h for r in rows for h in r.hash_ids), dtype=np.int64))
    id_tokens = HashedRows(ctx.seed, _HASH_STREAM, block, ctx.vocab_size)
    offsets = np.concatenate(([0], np.cumsum([len(r.hash_ids) for r in rows])))  # rows' slices of all_ids
    # ceil of the scaled length, rounded first so that 1000 * 0.1 is 100, not 101
    lengths = [max(1, math.ceil(round(r.input_length * ls, 9))) for r in rows]
    # 0 (strict_lengths=false) or a short output scaled to 0 by length_scale: the prefill's token.
    outputs = [max(1, round(r.output_length * ls)) for r in rows]
    short = [i for i, r in enumerate(rows) if len(r.hash_ids) * block < lengths[i]]
    pads = dict(zip(short, unique_tokens(ctx.seed, _PAD_STREAM, short,
                                         [lengths[i] - len(rows[i].hash_ids) * block for i in short],
                                         ctx.vocab_size)))
    arrivals = np.array([(r.t - t0) * scale for r in rows], dtype=np.float64)

    def make(i: int, **fields) -> RequestSpec:
        r = rows[i]
        a, b = int(offsets[i]), int(offsets[i + 1])
        covered = min(lengths[i], (b - a) * block)
        # The KV cache manager keys these tokens' blocks from the ids (apcsim/core/content_ids.py);
        # the tokens themselves are made only where something reads them.
        ids = ContentIds(all_ids[a:b], block, covered, _CONTENT_TABLE)
        prompt = TablePrompt(id_tokens, ids, pads.get(i))
        own = {"arrival_time": float(arrivals[i]), "cache_salt": r.salt, **r.priorities}
        own.update(fields)  # the run's rules (Poisson times, tenants, classes) over the trace's
        return RequestSpec(request_id=f"mc-{i}", prompt_token_ids=prompt, content_ids=ids,
                           output_len=outputs[i], **own)

    return SpecSource(count=len(rows), make=make, min_tokens=min(a + b for a, b in zip(lengths, outputs)),
                      arrival_times=arrivals, own_salts=any(r.salt is not None for r in rows),
                      **trace_priority_flags([r.priorities for r in rows], "mc"))


class TablePrompt(LazyPrompt):
    """A trace prompt as the token rows of its content ids (`content.span` tokens each,
    `rows_of(ids)`: int32 [len(ids), span]), cut at `content.num_tokens`, then its own `pad`
    (the tokens past its ids, or None). Where `rows_of` also has `columns(ids, a, b)` (a
    `HashedRows`: the rows' positions [a, b) alone), a read within one row makes just those."""

    __slots__ = ("_rows_of", "_content", "_pad")

    def __init__(self, rows_of: Callable[[np.ndarray], np.ndarray], content: ContentIds,
                 pad: np.ndarray | None) -> None:
        super().__init__(content.num_tokens + (0 if pad is None else len(pad)))
        self._rows_of = rows_of  # shared by every prompt of the trace
        self._content = content  # the ids the KV cache manager keys the prompt from, too
        self._pad = pad  # int32 [length - covered] or None

    @property
    def nbytes(self) -> int:
        return 0 if self._pad is None else self._pad.nbytes

    def _make(self, start: int, stop: int) -> np.ndarray:
        parts = []
        covered, span = self._content.num_tokens, self._content.span
        if start < covered:
            end = min(stop, covered)
            first = start // span
            columns = getattr(self._rows_of, "columns", None)  # a HashedRows has them
            if columns is not None and (end - 1) // span == first:
                # Within one id's row (a block's tokens: keying past the ids starts from the
                # prompt's last few): only those positions are hashed, not the row's `span`.
                ids = self._content.ids[first : first + 1]
                parts.append(columns(ids, start - first * span, end - first * span).reshape(-1))
            else:
                rows = self._rows_of(self._content.ids[first : cdiv(end, span)])
                parts.append(rows.reshape(-1)[start - first * span : end - first * span])
        if stop > covered:
            parts.append(self._pad[max(start - covered, 0) : stop - covered])
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
