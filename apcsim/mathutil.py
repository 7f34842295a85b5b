"""Small arithmetic shared by the simulator, the engine and the workloads (pure Python: the
core and the simulator never import torch)."""

from __future__ import annotations


def cdiv(a, b):
    """Round-up integer division, ceil(a / b) without floats (exact for any int size); works on
    numpy integer arrays too. E.g. the blocks `a` tokens fill at `b` tokens per block."""
    return -(-a // b)
