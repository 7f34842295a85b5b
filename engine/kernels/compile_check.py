"""Compile the engine's Triton kernels for a GPU architecture on any machine, GPU or not.

The interpreter (``TRITON_INTERPRET=1``) checks what the kernels compute, not that they compile:
it accepts what the GPU compiler may refuse, and says nothing of shared memory, registers or
spills. Triton compiles ahead of time without a GPU (its LLVM and ptxas ship in the wheel), so
this drives the public wrappers (``write_kv``, ``paged_attention``, ``paged_decode_attention``)
with the engine's real shapes on CPU tensors, records each launch instead of running it,
specialises it exactly as a launch would (Triton's own binder: the same signature, constexprs and
16-byte alignment attributes), compiles it to a cubin for the target, and reads the cubin's
resource usage with the ``cuobjdump`` that ships with Triton.

    python -m engine.kernels.compile_check                 # sm_90 (H100) and sm_80 (A100), bf16
    python -m engine.kernels.compile_check --arch 90 --dtype bf16 --dtype fp16 --json out.json

A launch fails the check when it does not compile, when its shared memory exceeds the
architecture's per-block limit, or when its registers spill to local memory. Exit status 1 then,
2 on bad arguments. Uses Triton's JIT internals shared by Triton 3.6 to 3.9
(``create_function_from_signature``, ``JITFunction._pack_args``); must run without
``TRITON_INTERPRET`` (the interpreter replaces the JIT functions).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from apcsim.mathutil import cdiv

# From the CUDA programming guide's compute-capability table: the shared memory one block may opt
# into and one SM holds (sm_80: 163 and 164 KB, sm_90: 227 and 228 KB), 64K registers and at most
# 64 resident warps per SM. SM counts (A100 108, H100 SXM 132) size the split-KV decode grid.
ARCHS = {80: {"name": "A100", "smem_bytes": 166_912, "smem_per_sm": 167_936, "sms": 108},
         90: {"name": "H100", "smem_bytes": 232_448, "smem_per_sm": 233_472, "sms": 132}}
REGISTERS_PER_SM = 65_536
MAX_WARPS_PER_SM = 64
RESERVED_SMEM_PER_BLOCK = 1024  # the CUDA runtime's per-block reservation (sm_80 and later)
DTYPES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Heads:
    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int


# The engine's models (conf/model): the shapes a GPU run launches.
LLAMA3_8B = Heads("llama3_8b", 32, 8, 128)
TINY = Heads("tiny", 4, 2, 16)


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch: the JIT function and the arguments it was called with."""
    case: str
    kernel: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict


@dataclass
class Result:
    case: str
    kernel: str
    arch: int
    ok: bool
    compile_s: float  # a hit in Triton's on-disk cache takes ~0 s
    shared_bytes: int | None = None
    registers: int | None = None
    spill_bytes: int | None = None  # local memory per thread: > 0 means spills
    num_warps: int | None = None
    error: str | None = None

    @property
    def resident_warps(self) -> int | None:
        """Warps of this kernel one SM holds at once (the occupancy calculator's rule: registers
        allocated per warp in units of 256, shared memory per block plus the runtime's 1 KB)."""
        if not self.ok:
            return None
        regs_per_warp = cdiv(self.registers * 32, 256) * 256
        by_regs = (REGISTERS_PER_SM // max(regs_per_warp, 1)) // self.num_warps
        by_smem = ARCHS[self.arch]["smem_per_sm"] // (self.shared_bytes + RESERVED_SMEM_PER_BLOCK)
        by_warps = MAX_WARPS_PER_SM // self.num_warps
        return min(by_regs, by_smem, by_warps) * self.num_warps


def record_launches(calls: list[tuple[str, Callable[[], object]]]) -> list[Launch]:
    """Run each (case, call) with kernel launches recorded instead of run (outputs stay empty)."""
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []
    case = [""]

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(case[0], self, args, dict(kwargs)))
        return None

    saved = JITFunction.run
    JITFunction.run = record
    try:
        for name, call in calls:
            case[0] = name
            call()
    finally:
        JITFunction.run = saved
    return launches


def engine_calls(heads: Heads, dtype: str, block_size: int, sms: int) -> list[tuple[str, Callable[[], object]]]:
    """The launches of one model on one cache layout: the KV write, a 1,024-token prefill chunk
    after 3,072 cached tokens, a decode batch through the varlen kernel (mixed batches), and
    split-KV decode at batch 1, 64 and 256 with the split counts the target's SM count gives."""
    import torch

    from engine.kernels import triton_attention as ta
    from engine.kernels import triton_kv

    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    H, Hkv, D = heads.num_heads, heads.num_kv_heads, heads.head_dim
    num_blocks = 8  # values are never read: only shapes, strides and dtypes reach the compiler
    k_cache = torch.empty((num_blocks, block_size, Hkv, D), dtype=dt)  # [NB, BS, Hkv, D]
    v_cache = torch.empty_like(k_cache)
    scale = 1.0 / math.sqrt(D)
    tag = f"{heads.name} {dtype} block {block_size}"

    def write_kv():
        k = torch.empty((1024, Hkv, D), dtype=dt)  # [T, Hkv, D]
        triton_kv.write_kv(k_cache, v_cache, k, torch.empty_like(k), torch.zeros(1024, dtype=torch.int64))

    def varlen(batch: int, new_tokens: int, cached: int):
        def call():
            q = torch.empty((batch * new_tokens, H, D), dtype=dt)  # [T, H, D]
            width = cdiv(cached + new_tokens, block_size)
            qsl = torch.arange(0, batch * new_tokens + 1, new_tokens, dtype=torch.int32)  # [B+1]
            seq_lens = torch.full((batch,), cached + new_tokens, dtype=torch.int32)  # [B]
            tables = torch.zeros((batch, width), dtype=torch.int32)  # [B, width]
            ta.paged_attention(q, k_cache, v_cache, tables, qsl, seq_lens, scale, max_query_len=new_tokens)
        return call

    def decode(batch: int, context: int):
        def call():
            q = torch.empty((batch, H, D), dtype=dt)  # [B, H, D]
            tables = torch.zeros((batch, cdiv(context, block_size)), dtype=torch.int32)
            seq_lens = torch.full((batch,), context, dtype=torch.int32)
            splits = ta.num_splits_for(batch, Hkv, sms)
            ta.paged_decode_attention(q, k_cache, v_cache, tables, seq_lens, scale, num_splits=splits)
        return call

    return [
        (f"{tag}: write_kv 1024 tokens", write_kv),
        (f"{tag}: prefill 1024 after 3072 cached", varlen(1, 1024, 3072)),
        (f"{tag}: varlen decode x64 at 1024", varlen(64, 1, 1023)),
        *[(f"{tag}: decode x{b} at 4096 ({ta.num_splits_for(b, Hkv, sms)} splits)", decode(b, 4096)) for b in (1, 64, 256)],
    ]


def _bin(tool: str) -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / tool


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, SHARED and LOCAL (bytes of local memory per thread: spills) of a one-kernel cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(_bin("cuobjdump")), "--dump-resource-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    found = dict(re.findall(r"\b(REG|SHARED|LOCAL):(\d+)", out))
    if not {"REG", "SHARED", "LOCAL"} <= found.keys():
        raise RuntimeError(f"cuobjdump printed no resource usage: {out.strip()[:200]}")
    return {k: int(v) for k, v in found.items()}


@dataclass(frozen=True)
class Specialised:
    """A launch as Triton's launcher would compile it: source, target and options."""
    src: object  # triton.compiler.ASTSource
    target: object  # triton.backends.compiler.GPUTarget
    options: dict
    key: str  # equal keys compile to the same binary


def specialise(launch: Launch, arch: int) -> Specialised:
    """Bind a recorded launch's arguments with Triton's own binder for sm_<arch>: the signature,
    constexprs and alignment attributes a real launch would get."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = {**launch.kwargs, "debug": False}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    key = repr((fn.__name__, arch, signature, sorted(constexprs.items()), sorted(attrs.items()), sorted(options.__dict__.items())))
    return Specialised(ASTSource(fn, signature, constexprs, attrs), target, options.__dict__, key)


def compile_launch(launch: Launch, spec: Specialised) -> Result:
    """Compile a specialised launch to a cubin and read its resources."""
    import triton

    name, arch = launch.kernel.__name__, spec.target.arch
    t0 = time.perf_counter()
    try:
        kernel = triton.compile(spec.src, target=spec.target, options=spec.options)
        usage = resource_usage(kernel.asm["cubin"])
    except Exception as e:
        text = str(e).strip()
        first = text.splitlines()[0] if text else ""
        return Result(launch.case, name, arch, False, time.perf_counter() - t0, error=f"{type(e).__name__}: {first}")
    return Result(launch.case, name, arch, True, time.perf_counter() - t0,
                  # dynamic shared memory the launch asks for, plus any static the cubin declares
                  shared_bytes=int(kernel.metadata.shared) + usage["SHARED"], registers=usage["REG"],
                  spill_bytes=usage["LOCAL"], num_warps=int(kernel.metadata.num_warps))


def problems(r: Result) -> list[str]:
    if not r.ok:
        return [f"does not compile: {r.error}"]
    out = []
    limit = ARCHS[r.arch]["smem_bytes"]
    if r.shared_bytes > limit:
        out.append(f"shared memory {r.shared_bytes} B > {limit} B per block on sm_{r.arch}")
    if r.spill_bytes:
        out.append(f"spills {r.spill_bytes} B per thread to local memory")
    return out


def run_check(archs: list[int], dtypes: list[str], block_sizes: list[int],
              models: list[Heads]) -> tuple[list[Result], int]:
    """Every launch's result, and how many distinct binaries were compiled."""
    from engine.kernels import interpreter_requested

    if interpreter_requested():
        raise SystemExit("compile_check: unset TRITON_INTERPRET (the interpreter replaces the JIT functions)")
    results, num_compiles = [], 0
    for arch in archs:
        calls = [c for m in models for d in dtypes for bs in block_sizes
                 for c in engine_calls(m, d, bs, ARCHS[arch]["sms"])]
        compiled: dict[str, Result] = {}
        for launch in record_launches(calls):
            spec = specialise(launch, arch)
            if spec.key not in compiled:  # launches that specialise alike compile alike: once
                compiled[spec.key] = compile_launch(launch, spec)
            results.append(Result(**{**asdict(compiled[spec.key]), "case": launch.case}))
        num_compiles += len(compiled)
    return results, num_compiles


def format_table(results: list[Result]) -> str:
    rows = ["| case | kernel | arch | warps | regs | shared (KB) | spill (B) | warps/SM | verdict |",
            "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        verdict = "; ".join(problems(r)) or "ok"
        if r.ok:
            rows.append(f"| {r.case} | {r.kernel} | sm_{r.arch} | {r.num_warps} | {r.registers} | "
                        f"{r.shared_bytes / 1024:.1f} | {r.spill_bytes} | {r.resident_warps} | {verdict} |")
        else:
            rows.append(f"| {r.case} | {r.kernel} | sm_{r.arch} | | | | | | {verdict} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.kernels.compile_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, action="append", choices=sorted(ARCHS), help="compute capability x10 (repeatable)")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="KV cache and activation dtype (repeatable)")
    p.add_argument("--block-size", type=int, action="append", help="KV block size (repeatable; default 1, 16, 64)")
    p.add_argument("--model", action="append", choices=("llama3_8b", "tiny"), help="head shapes (default both)")
    p.add_argument("--json", type=Path, help="also write the results here")
    a = p.parse_args(argv)
    if a.block_size and min(a.block_size) < 1:
        p.error("--block-size must be >= 1")
    models = [{"llama3_8b": LLAMA3_8B, "tiny": TINY}[m] for m in (a.model or ["llama3_8b", "tiny"])]
    results, num_compiles = run_check(a.arch or [90, 80], a.dtype or ["bf16"], a.block_size or [1, 16, 64], models)
    import triton

    print(f"Triton {triton.__version__}: {len(results)} launches, {num_compiles} distinct binaries")
    print(format_table(results))
    if a.json:
        a.json.write_text(json.dumps({"triton": triton.__version__, "num_compiles": num_compiles,
                                       "results": [{**asdict(r), "resident_warps": r.resident_warps} for r in results]},
                                      indent=1))
    bad = [(r, why) for r in results for why in problems(r)]
    for r, why in bad:
        print(f"compile_check: {r.case} ({r.kernel}, sm_{r.arch}): {why}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
