"""Convert Vidur's public A100 profiles into apcsim's profile schema.

    python -m apcsim.calibration.vidur --src ../shared/calibration/vidur \
        --out apcsim/profiles/a100/llama3_8b.csv

Vidur (microsoft/vidur, MIT, "Copyright (c) Microsoft Corporation") profiled sarathi-serve's
kernels on A100 80GB with CUDA timers / Kineto; every value is the median in milliseconds for one
transformer layer on one GPU. What is converted, row for row (nothing is fitted or scaled here;
that is the cost model's job, so the CSV keeps what was measured):

- token-level ops of Meta-Llama-3-8B at TP1 (`compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv`,
  commit 7d47513): embedding, the two RMSNorms, QKV / output / gate+up / down GEMMs, rotary,
  SiLU-and-mul, residual add, by number of tokens 1 .. 32,768;
- attention of Llama-2-70B at TP2 (`a100/attention.csv` of commit acb95f6, FlashAttention,
  block size 16): 32 query and 4 KV heads of 128 per GPU. Prefill by (chunk tokens 64 .. 4,096,
  cached context 0 .. 4,032), decode by (batch 1 .. 128, context 32 .. 4,032). The rows keep
  that measured shape; `CalibratedCostModel` adapts it to the model's 8 KV heads;
- vLLM CPU overheads per step by batch size (`a100/cpu_overheads.csv` of commit acb95f6,
  CodeLlama-34B at TP2, batch 8 .. 128): schedule, sampler, prepare-inputs and
  process-outputs medians. Ray's TP communication time is left out (one GPU here).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from apcsim.calibration.profile import write_profile
from apcsim.errors import exit_bad_input

COMPUTE_COMMIT = "7d47513"
LEGACY_COMMIT = "acb95f6"
TOKEN_OPS = {  # Vidur's name -> ours (the same names)
    name: name for name in ("emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
                            "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
}
CPU_OPS = {"schedule": "cpu_schedule", "sampler_e2e": "cpu_sampler",
           "prepare_inputs_e2e": "cpu_prepare_inputs", "process_model_outputs": "cpu_process_outputs"}
MLP_FILE = "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv"
ATTN_FILE = "legacy_commit_acb95f6/a100/attention.csv"
CPU_FILE = "legacy_commit_acb95f6/a100/cpu_overheads.csv"


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"Vidur profile not found: {path}")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def token_rows(src: Path, hardware: str, model: str) -> list[dict]:
    out = []
    for r in _read(src / MLP_FILE):
        if int(r["num_tensor_parallel_workers"]) != 1:
            continue
        heads, kv, embd = int(r["n_head"]), int(r["n_kv_head"]), int(r["n_embd"])
        for vname, op in TOKEN_OPS.items():
            t = float(r[f"time_stats.{vname}.median"])
            if t <= 0:
                continue
            out.append(dict(hardware=hardware, model=model, op=op, num_tokens=int(r["num_tokens"]), batch_size=0,
                            context_len=0, num_heads=heads, num_kv_heads=kv, head_dim=embd // heads, tp=1,
                            time_ms_median=t,
                            source=f"vidur@{COMPUTE_COMMIT}:{MLP_FILE}"))
    return out


def attention_rows(src: Path, hardware: str, model: str) -> list[dict]:
    out = []
    for r in _read(src / ATTN_FILE):
        tp = int(r["num_tensor_parallel_workers"])
        heads, kv = int(r["n_q_head"]) // tp, int(r["n_kv_head"]) // tp
        head_dim = int(r["n_embd"]) // int(r["n_q_head"])
        src_txt = f"vidur@{LEGACY_COMMIT}:a100/attention.csv:Llama-2-70b-hf:tp{tp}"
        if r["is_prefill"] == "True":
            op, n, bs, col = "attn_prefill", int(r["prefill_chunk_size"]), 1, "attn_prefill"
        else:
            bs = int(r["batch_size"])
            op, n, col = "attn_decode", bs, "attn_decode"
        t = float(r[f"time_stats.{col}.median"])
        if t <= 0:
            continue
        out.append(dict(hardware=hardware, model=model, op=op, num_tokens=n, batch_size=bs,
                        context_len=int(r["kv_cache_size"]), num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
                        tp=tp, time_ms_median=t, source=src_txt))
    return out


def cpu_rows(src: Path, hardware: str, model: str) -> list[dict]:
    out = []
    for r in _read(src / CPU_FILE):
        tp = int(r["tensor_parallel_degree"])
        # CodeLlama-34B: 64 query / 8 KV heads of 128; per GPU at TP2.
        for vname, op in CPU_OPS.items():
            t = float(r[f"{vname}_median"])
            if t <= 0:
                continue
            out.append(dict(hardware=hardware, model=model, op=op, num_tokens=0, batch_size=int(r["batch_size"]),
                            context_len=0, num_heads=64 // tp, num_kv_heads=8 // tp, head_dim=128, tp=tp,
                            time_ms_median=t,
                            source=f"vidur@{LEGACY_COMMIT}:a100/cpu_overheads.csv:{r['model_name'].split('/')[-1]}:tp{tp}"))
    return out


def convert(src: Path, out: Path, hardware: str = "a100", model: str = "llama3_8b") -> int:
    rows = token_rows(src, hardware, model) + attention_rows(src, hardware, model) + cpu_rows(src, hardware, model)
    write_profile(out, rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m apcsim.calibration.vidur", description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, required=True, help="the Vidur data directory (compute/, legacy_commit_acb95f6/)")
    p.add_argument("--out", type=Path, required=True, help="the profile CSV to write")
    p.add_argument("--hardware", default="a100")
    p.add_argument("--model", default="llama3_8b")
    a = p.parse_args(argv)
    try:
        n = convert(a.src, a.out, a.hardware, a.model)
    except (OSError, ValueError, KeyError) as e:
        msg = f"missing column {e}" if isinstance(e, KeyError) else str(e)
        exit_bad_input("apcsim.calibration.vidur", msg)
    print(f"wrote {n} rows to {a.out}")


if __name__ == "__main__":
    main()
