"""Paged-KV attention kernels: Triton kernels for the GPU, pure-PyTorch references for the CPU.

Layouts
-------
- ``k_cache``, ``v_cache``: ``[num_blocks, block_size, num_kv_heads, head_dim]`` (one pair per
  layer). A token's *slot* is ``block_id * block_size + offset``.
- ``block_tables``: ``[B, max_blocks_per_seq]`` int32. Only the first
  ``cdiv(seq_lens[b], block_size)`` entries of row ``b`` are read, so the rest may hold anything.
- GQA: query head ``h`` uses kv head ``h // (num_heads // num_kv_heads)``.

The three operations
--------------------
``write_kv(k_cache, v_cache, k, v, slot_mapping) -> None``
    k, v ``[T, num_kv_heads, head_dim]``; slot_mapping ``[T]`` int64. Writes in place; a
    negative slot means "padding token, skip it".
``paged_attention(q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, scale) -> out``
    Packed varlen batch mixing prefill chunks and decodes. q ``[T, num_heads, head_dim]``;
    query_start_loc ``[B+1]`` int32 (cumulative new-token counts); seq_lens ``[B]`` int32 =
    tokens with KV *after* this step's write. Sequence b's ``n_b`` new tokens sit at positions
    ``seq_lens[b]-n_b .. seq_lens[b]-1`` and attend causally to every position ``<=`` their own
    (cached prefix included). Returns ``[T, num_heads, head_dim]`` in q's dtype (fp32
    accumulation). Optional keyword ``max_query_len=`` (int) spares the Triton backend a
    device-to-host sync to size its grid.
``paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, num_splits=None)``
    q ``[B, num_heads, head_dim]``, one new token per sequence at position ``seq_lens[b]-1``.
    Split-KV (flash-decoding): ``num_splits`` partitions of each context computed in parallel,
    merged by a second kernel. ``None`` picks a split count from the batch shape only (no
    host sync, so the call is CUDA-graph capturable with a fixed ``num_splits``).

Choosing a backend
------------------
``get_ops(name)`` returns a :class:`KernelOps` whose attributes are the three functions; the
engine resolves one from its ``attention_backend`` option and hands it to the model::

    from engine import kernels
    ops = kernels.get_ops("triton")      # or "torch" (the references in reference.py)
    ops.write_kv(k_cache, v_cache, k, v, slot_mapping)
    out = ops.paged_attention(q, k_cache, v_cache, block_tables, qsl, seq_lens, scale)
    out = ops.paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)

Triton is imported only when the ``"triton"`` backend is requested, so the engine runs on a
machine without it; on a CPU set ``TRITON_INTERPRET=1`` before that to run the Triton kernels in
Triton's interpreter (fp32/fp16 only; bf16 is broken there). ``triton_unusable_reason(device)``
says, before any kernel launches, why the Triton backend cannot run on a device.

The kernels are checked in the interpreter on Triton 3.6.0, 3.7.1, 3.8.0 and 3.9.0. Before 3.7
the interpreter converts one-element arrays to Python ints, which NumPy 2.4 refuses: there it
needs NumPy < 2.4 (compiled kernels on a GPU are not affected).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

from . import reference

__all__ = ["KernelOps", "get_ops", "BACKENDS"]

BACKENDS = ("torch", "triton")


@dataclass(frozen=True)
class KernelOps:
    """The three paged-KV operations of one backend."""

    name: str
    write_kv: Callable
    paged_attention: Callable
    paged_decode_attention: Callable


def _version(package: str) -> tuple[int, int] | None:
    try:
        major, minor = metadata.version(package).split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def interpreter_requested() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter (read as Triton reads a flag)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_unusable_reason(device_type: str) -> str | None:
    """Why the Triton backend cannot run on a device of this type ("cuda" or "cpu"), or None.
    Checked before Triton is imported: on a CPU without the interpreter, Triton's own error is
    "0 active drivers" deep inside the first launch."""
    triton = _version("triton")
    if triton is None:
        return "the triton backend needs Triton: pip install -e '.[engine]'"
    if device_type == "cuda":
        return None
    if not interpreter_requested():
        return ("the triton backend on the CPU needs Triton's interpreter: set TRITON_INTERPRET=1 in the environment "
                "(fp32/fp16 only), or use attention_backend=torch")
    numpy = _version("numpy")
    if triton < (3, 7) and numpy is not None and numpy >= (2, 4):
        return (f"Triton {'.'.join(map(str, triton))}'s interpreter fails on NumPy {'.'.join(map(str, numpy))} "
                "(it needs NumPy < 2.4, or Triton >= 3.7)")
    return None


def get_ops(name: str) -> KernelOps:
    """The operations of backend ``name`` (``"triton"`` or ``"torch"``)."""
    if name == "torch":
        return KernelOps("torch", reference.write_kv, reference.paged_attention, reference.paged_decode_attention)
    if name == "triton":
        # Imported here so that the engine runs on machines without Triton (torch backend).
        from . import triton_attention, triton_kv

        return KernelOps("triton", triton_kv.write_kv, triton_attention.paged_attention,
                         triton_attention.paged_decode_attention)
    raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
