"""`python -m engine.host_link model=llama3_8b`: measure the host tier's copies on this machine.

Copies runs of 1 to `max_blocks` KV blocks between the device cache and the engine's host buffer
(`engine.host_kv.HostKVBuffer`, pinned on CUDA: the very copy path the engine runs), both ways,
`repeats` times each, and writes the fastest of each as a link profile (`apcsim.calibration.host_link`)
to `out=` (default `apcsim/profiles/<hardware>/<model>.host_link.csv`). A run then uses its fit
with `cpu_tier.link_profile=PATH` instead of the preset's datasheet bandwidth. Arguments are
key=value: device (auto), model (tiny), block_size (16), max_blocks (64), repeats (5), out.
Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROG = "engine.host_link"
DEFAULTS = {"device": "auto", "model": "tiny", "block_size": "16", "max_blocks": "64", "repeats": "5", "out": None}


def block_counts(max_blocks: int) -> list[int]:
    """1, 2, 4, ... up to max_blocks (included)."""
    out, n = [], 1
    while n < max_blocks:
        out.append(n)
        n *= 2
    return out + [max_blocks]


def measure(device, model_cfg, block_size: int, max_blocks: int, repeats: int) -> list[dict]:
    """Rows of the link profile: per direction and run length, the fastest of `repeats` copies
    (a bandwidth: slower repeats measure whatever else the machine was doing)."""
    import torch

    from apcsim.core.host_tier import Copy
    from engine.host_kv import HostKVBuffer
    from engine.weights import default_dtype

    dtype = default_dtype(device)
    shape = (model_cfg.num_layers, max_blocks, block_size, model_cfg.num_kv_heads, model_cfg.head_dim)
    k = torch.randn(shape, device=device, dtype=dtype)
    v = torch.randn(shape, device=device, dtype=dtype)
    buf = HostKVBuffer(k, v, max_blocks)
    rows = []
    for kind in ("store", "load"):
        for n in block_counts(max_blocks):
            copies = [Copy(kind, i, i) for i in range(n)]
            buf.run(copies)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                buf.run(copies)  # returns once the copies are done (synchronised on CUDA)
                times.append(time.perf_counter() - t0)
            rows.append({"direction": kind, "num_blocks": n, "bytes": n * buf.block_bytes,
                         "time_ms": min(times) * 1e3})
    return rows


def parse(argv: list[str]) -> dict:
    args = dict(DEFAULTS)
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep or key not in args:
            raise ValueError(f"expected key=value with key one of {', '.join(DEFAULTS)}, got {a!r}")
        args[key] = value
    for key in ("block_size", "max_blocks", "repeats"):
        if not args[key].isdigit() or int(args[key]) < 1 or (key == "max_blocks" and int(args[key]) < 2):
            raise ValueError(f"{key} must be an integer >= {2 if key == 'max_blocks' else 1}, got {args[key]!r}")
    return args


def main(argv: list[str] | None = None) -> Path:
    from apcsim.calibration.host_link import read_link_profile, write_link_profile
    from apcsim.cli.compose import compose_config
    from apcsim.errors import ApcsimError, exit_bad_input
    from engine.config import resolve_device
    from engine.profile import hardware_name_of

    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        model = compose_config([f"model={args['model']}"]).model
        device = resolve_device(args["device"])
    except (ValueError, ApcsimError) as e:
        exit_bad_input(PROG, str(e))
    hw = hardware_name_of(device)
    out = Path(args["out"] or f"apcsim/profiles/{hw}/{model.name}.host_link.csv")
    rows = measure(device, model, int(args["block_size"]), int(args["max_blocks"]), int(args["repeats"]))
    path = write_link_profile(out, rows)
    fit = read_link_profile(path)
    print(f"{PROG}: {path}: " + ", ".join(f"{d} {f.bw_gbps:.3g} GB/s + {f.latency_us:.3g} us" for d, f in fit.items()))
    return path


if __name__ == "__main__":
    main()
