"""The calibration profile schema: one CSV row per measured kernel-group point.

A profile holds the timings the calibrated cost model is fitted on, for one (hardware, model)
pair, and lives at `apcsim/profiles/<hardware>/<model>.csv` (names as in `conf/hardware` and
`conf/model`). Vidur's public data (converted by `apcsim.calibration.vidur`) and our engine's own
profiler write the same columns:

| column | meaning |
|---|---|
| `hardware`, `model` | the `hardware=` and `model=` names this profile is for |
| `op` | kernel group, one of `OPS` below |
| `num_tokens` | tokens the op processed: the step's tokens (token ops), the chunk's new tokens (`attn_prefill`), sampled tokens (`lm_head`), hashed prompt tokens (`cpu_hash`); for `attn_decode` and `decode_step` the batch size |
| `batch_size` | requests in the op: decode batch (`attn_decode`, `decode_step`), 1 (`attn_prefill`), requests in the step (`cpu_*`); 0 where not applicable |
| `context_len` | tokens of each request already in the KV cache before this step (cached prefix or computed earlier); 0 for token ops |
| `num_heads`, `num_kv_heads`, `head_dim` | attention shape per GPU of the kernels as measured (they may differ from the model's: the cost model scales, see `apcsim.calibration.cost_model`) |
| `tp` | tensor-parallel degree of the measurement |
| `time_ms_median` | median of the repeated measurements, milliseconds, per layer (`scope` "layer") or per step ("step") |
| `source` | provenance: project, commit, file, and what was measured if it is not the model itself |

Integers are written as integers; 0 stands for "not applicable".
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

COLUMNS = ("hardware", "model", "op", "num_tokens", "batch_size", "context_len", "num_heads",
           "num_kv_heads", "head_dim", "tp", "time_ms_median", "source")
_INT_COLUMNS = ("num_tokens", "batch_size", "context_len", "num_heads", "num_kv_heads", "head_dim", "tp")


@dataclass(frozen=True)
class OpSpec:
    kind: str  # "token" (by num_tokens), "attn_prefill", "attn_decode", "cpu_batch" (by batch_size), "cpu_token"
    scope: str  # "layer": once per transformer layer; "step": once per engine step
    doc: str


OPS: dict[str, OpSpec] = {
    # Token-level ops: their time depends on the number of tokens in the step only.
    "input_layernorm": OpSpec("token", "layer", "RMSNorm before attention"),
    "attn_pre_proj": OpSpec("token", "layer", "fused QKV projection GEMM"),
    "attn_rope": OpSpec("token", "layer", "rotary embedding of Q and K"),
    "kv_cache_save": OpSpec("token", "layer", "writing the new tokens' K and V into the paged cache"),
    "attn_post_proj": OpSpec("token", "layer", "attention output projection GEMM"),
    "post_attention_layernorm": OpSpec("token", "layer", "RMSNorm before the MLP"),
    "mlp_up_proj": OpSpec("token", "layer", "fused gate+up projection GEMM"),
    "mlp_act": OpSpec("token", "layer", "SiLU and multiply"),
    "mlp_down_proj": OpSpec("token", "layer", "down projection GEMM"),
    "add": OpSpec("token", "layer", "residual add"),
    "emb": OpSpec("token", "step", "token embedding lookup"),
    "lm_head": OpSpec("token", "step", "vocabulary projection of the sampled tokens (num_tokens = sampled tokens)"),
    # Attention.
    "attn_prefill": OpSpec("attn_prefill", "layer", "attention of one prefill chunk: num_tokens new tokens after context_len"),
    "attn_decode": OpSpec("attn_decode", "layer", "decode attention of batch_size requests, each with context_len tokens"),
    # A whole pure-decode step as one unit (our engine's profiler, when it replays decode steps
    # from CUDA graphs: their launches cost nothing, so the per-op sum would overstate the step).
    "decode_step": OpSpec("attn_decode", "step", "the whole forward of a pure-decode step of batch_size requests at "
                          "context_len each (every layer, LM head, argmax, tokens to the host), as the engine replays it"),
    # CPU work of the serving engine, by requests in the step or by hashed tokens.
    "cpu_step": OpSpec("cpu_batch", "step", "all CPU work of a step outside the forward pass (our engine's profiler)"),
    "cpu_schedule": OpSpec("cpu_batch", "step", "scheduler"),
    "cpu_sampler": OpSpec("cpu_batch", "step", "sampler, end to end"),
    "cpu_prepare_inputs": OpSpec("cpu_batch", "step", "building the model inputs, end to end"),
    "cpu_process_outputs": OpSpec("cpu_batch", "step", "processing the model outputs"),
    "cpu_hash": OpSpec("cpu_token", "step", "prefix-cache block hashing and lookup of num_tokens prompt tokens"),
}


@dataclass
class OpData:
    """All rows of one op, as arrays (one entry per row)."""

    num_tokens: np.ndarray
    batch_size: np.ndarray
    context_len: np.ndarray
    time_ms: np.ndarray
    num_heads: int
    num_kv_heads: int
    head_dim: int
    sources: tuple[str, ...]
    tp: int = 1  # tensor-parallel degree of these rows' measurement


@dataclass
class Profile:
    path: str
    hardware: str
    model: str
    ops: dict[str, OpData]

    @property
    def tp(self) -> int:
        """The tensor-parallel degree the profile is for: that of its weight GEMMs (attention may
        have been measured at another split and rescaled per GPU, as a100/llama3_8b's was)."""
        return self.ops["attn_pre_proj"].tp if "attn_pre_proj" in self.ops else 1


def write_profile(path: Path, rows: list[dict]) -> None:
    """Rows are dicts with every key of COLUMNS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            missing = set(COLUMNS) - set(r)
            if missing:
                raise ValueError(f"profile row lacks {sorted(missing)}: {r}")
            if r["op"] not in OPS:
                raise ValueError(f"unknown op {r['op']!r}")
            w.writerow([f"{r[c]:.6g}" if c == "time_ms_median" else r[c] for c in COLUMNS])


def read_profile(path: Path | str) -> Profile:
    """Read and check a profile; a malformed one raises ValueError naming the file and line."""
    path = Path(path)
    cols: dict[str, dict[str, list]] = {}
    shapes: dict[str, set] = {}
    tps: dict[str, set] = {}
    hw_model: set[tuple[str, str]] = set()
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        if header != COLUMNS:
            raise ValueError(f"{path}: columns must be {','.join(COLUMNS)}, got {','.join(header)}")
        c = {name: k for k, name in enumerate(COLUMNS)}
        int_idx = [c[name] for name in _INT_COLUMNS]
        i_op, i_t, i_src, i_hw, i_model = c["op"], c["time_ms_median"], c["source"], c["hardware"], c["model"]
        for line, r in enumerate(reader, start=2):
            if len(r) != len(COLUMNS):
                raise ValueError(f"{path}, line {line}: {len(r)} fields, expected {len(COLUMNS)}")
            op = r[i_op]
            if op not in OPS:
                raise ValueError(f"{path}, line {line}: unknown op {op!r} (known: {', '.join(OPS)})")
            try:
                tokens, batch, ctx, heads, kv, head_dim, tp = (int(r[k]) for k in int_idx)
                t = float(r[i_t])
            except ValueError as e:
                raise ValueError(f"{path}, line {line}: {e}") from None
            if not (t > 0 and math.isfinite(t)) or min(tokens, batch, ctx, heads, kv, head_dim, tp) < 0:
                raise ValueError(f"{path}, line {line}: times must be > 0 and counts >= 0")
            hw_model.add((r[i_hw], r[i_model]))
            d = cols.get(op)
            if d is None:
                d = cols[op] = {"num_tokens": [], "batch_size": [], "context_len": [], "time_ms": [], "src": []}
            d["num_tokens"].append(tokens)
            d["batch_size"].append(batch)
            d["context_len"].append(ctx)
            d["time_ms"].append(t)
            if not d["src"] or d["src"][-1] != r[i_src]:
                d["src"].append(r[i_src])
            shapes.setdefault(op, set()).add((heads, kv, head_dim))
            tps.setdefault(op, set()).add(tp)
    if not hw_model:
        raise ValueError(f"{path}: no measurements after the header line (an empty profile); "
                         "profile the engine first (python -m engine.profile)")
    if len(hw_model) != 1:
        raise ValueError(f"{path}: one (hardware, model) per profile, found {sorted(hw_model)}")
    ops = {}
    for op, d in cols.items():
        if len(shapes[op]) != 1:
            raise ValueError(f"{path}: op {op} mixes attention shapes {sorted(shapes[op])}")
        if len(tps[op]) != 1:
            raise ValueError(f"{path}: op {op} mixes tp {sorted(tps[op])}")
        (h, kv, hd), = shapes[op]
        ops[op] = OpData(np.array(d["num_tokens"], dtype=np.int64), np.array(d["batch_size"], dtype=np.int64),
                         np.array(d["context_len"], dtype=np.int64), np.array(d["time_ms"], dtype=np.float64),
                         h, kv, hd, tuple(dict.fromkeys(d["src"])), tps[op].pop())
    (hw, model), = hw_model
    return Profile(str(path), hw, model, ops)


def profiles_root() -> Path:
    return Path(str(resources.files("apcsim") / "profiles"))


def available_profiles() -> list[str]:
    """Bundled profiles as "hardware/model" (tp 1) or "hardware/model_tpN"."""
    root = profiles_root()
    return sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.csv"))


def profile_stem(model: str, tp: int = 1) -> str:
    """A calibrated profile is per (hardware, model, tp): `<model>.csv` at tp 1, else `<model>_tp<N>.csv`."""
    return model if tp == 1 else f"{model}_tp{tp}"


def profile_path(hardware: str, model: str, tp: int = 1) -> Path | None:
    p = profiles_root() / hardware / f"{profile_stem(model, tp)}.csv"
    return p if p.is_file() else None
