"""The Triton kernels compile for the H100 (sm_90) with the engine's Llama-3-8B shapes, without
a GPU: what the interpreter tests cannot show (engine/kernels/compile_check.py).

Runs in subprocesses: other test modules set TRITON_INTERPRET=1 in this process, which replaces
the JIT functions the compiler needs. Each gets its own Triton cache, so every binary is really
compiled here rather than found on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest

from engine.kernels.compile_check import ARCHS, Result, problems
from tests.helpers import ROOT

# Found, not imported: importing Triton here, before the interpreter tests set TRITON_INTERPRET,
# would leave their kernels compiled for a GPU.
_triton = find_spec("triton")
if find_spec("torch") is None or _triton is None:
    pytest.skip("the engine extra (torch, triton) is not installed", allow_module_level=True)
if not (Path(_triton.submodule_search_locations[0]) / "backends" / "nvidia" / "bin" / "cuobjdump").exists():
    pytest.skip("this Triton wheel has no NVIDIA backend tools (ptxas, cuobjdump)", allow_module_level=True)


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), TRITON_DEFAULT_FP_FUSION="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_engine_kernels_compile_for_h100_without_spills(tmp_path):
    out = tmp_path / "check.json"
    p = _run(["-m", "engine.kernels.compile_check", "--arch", "90", "--model", "llama3_8b", "--dtype", "bf16",
              "--block-size", "1", "--block-size", "16", "--block-size", "64", "--json", str(out)], tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads(out.read_text())
    results = doc["results"]
    # 3 block sizes x (write_kv, prefill, varlen decode, 3 decode batches x 2 kernels) = 27 launches.
    assert len(results) == 27 and all(r["ok"] and r["arch"] == 90 for r in results)
    assert {r["kernel"] for r in results} == {"_write_kv_kernel", "_paged_prefill_kernel",
                                             "_paged_decode_split_kernel", "_decode_reduce_kernel"}
    for r in results:
        assert r["spill_bytes"] == 0 and 0 < r["registers"] <= 255
        assert r["shared_bytes"] <= ARCHS[90]["smem_bytes"] and r["resident_warps"] >= r["num_warps"]
    # The block size is a constexpr of the attention kernels: one binary per block size for the
    # prefill kernel's two tilings and the decode kernel's three split counts; the reduce kernel
    # depends on the split count alone; write_kv only on whether block_size is 1 (Triton
    # specialises an int argument of 1 into a constant).
    assert doc["num_compiles"] == 3 * 2 + 3 * 3 + 3 + 2
    # H100's 132 SMs give batch 1 the capped 32 splits, batch 64 three, batch 256 one.
    assert {r["case"].split(": ")[1] for r in results if ": decode x" in r["case"]} == {
        "decode x1 at 4096 (32 splits)", "decode x64 at 4096 (3 splits)", "decode x256 at 4096 (1 splits)"}


def test_a_kernel_that_does_not_compile_fails_the_check(tmp_path):
    """A dot of 8 x 8 tiles runs in the interpreter but the GPU compiler needs 16: the check must
    report it per launch and exit 1."""
    (tmp_path / "bad_kernel.py").write_text(textwrap.dedent('''
        import sys
        import torch
        import triton
        import triton.language as tl
        from engine.kernels import compile_check as cc

        @triton.jit
        def small_dot(a_ptr, o_ptr, N: tl.constexpr):
            i = tl.arange(0, N)
            a = tl.load(a_ptr + i[:, None] * N + i[None, :])
            tl.store(o_ptr + i[:, None] * N + i[None, :], tl.dot(a, a))

        def call():
            a = torch.empty((8, 8), dtype=torch.float16)
            small_dot[(1,)](a, torch.empty_like(a), N=8)

        [launch] = cc.record_launches([("8x8 dot", call)])
        r = cc.compile_launch(launch, cc.specialise(launch, 90))
        print(r.ok, cc.problems(r))
        sys.exit(0 if not r.ok and cc.problems(r)[0].startswith("does not compile") else 1)
    '''))
    p = _run([str(tmp_path / "bad_kernel.py")], tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]


def test_over_the_shared_memory_limit_or_spilling_is_a_problem():
    fits = Result("c", "k", 90, True, 0.0, shared_bytes=ARCHS[90]["smem_bytes"], registers=128, spill_bytes=0, num_warps=4)
    assert problems(fits) == []
    assert fits.resident_warps == 4  # one block: the shared memory of the SM is used up
    too_big = Result(**{**fits.__dict__, "shared_bytes": ARCHS[90]["smem_bytes"] + 1})
    assert problems(too_big) == [f"shared memory {ARCHS[90]['smem_bytes'] + 1} B > {ARCHS[90]['smem_bytes']} B per block on sm_90"]
    assert problems(Result(**{**fits.__dict__, "arch": 80})) != []  # 227 KB does not fit an A100 block
    assert problems(Result(**{**fits.__dict__, "spill_bytes": 8})) == ["spills 8 B per thread to local memory"]
    # 128 registers x 4 warps: 16K registers a block, 4 blocks of 64K; shared memory 0: 16 warps.
    assert Result(**{**fits.__dict__, "shared_bytes": 0}).resident_warps == 16
