"""`python -m apcsim --help` (or `list`): the keys that matter, one line each, and every option
that is registered or shipped, read from the registries and the config directory, so a new
policy file or preset shows up here without editing this module."""

from __future__ import annotations

import importlib
import re
from importlib import resources
from pathlib import Path

# (key, what it does); defaults are read from the typed config so they cannot drift.
KEYS = (
    ("+policy=NAME", "eviction policy; no +policy (or +policy=none): prefix caching off"),
    ("block_size", "tokens per KV block"),
    ("num_gpu_blocks", "KV blocks; unset: sized like vLLM from gpu_memory_utilization, the GPU's memory and the weights"),
    ("gpu_memory_utilization", "share of each GPU's memory the engine may use"),
    ("max_concurrency", "client-side cap on requests in flight (unset: none)"),
    ("seed", "seed of the workload and output lengths"),
    ("scheduler=NAME", "waiting-queue order; scheduler.max_num_batched_tokens, .max_num_seqs, .chunked_prefill ..."),
    ("workload=NAME", "request source; workload.num_requests, workload.arrival (trace|burst|poisson), workload.path ..."),
    ("hardware=NAME", "GPU spec sheet: memory_gib, peak_tflops, mem_bw_gbps, interconnect_bw_gbps, interconnect_latency_us"),
    ("model=NAME", "model sizes; model.hf_config=PATH reads a Hugging Face config.json (MoE included)"),
    ("tp", "tensor-parallel GPUs per replica (roofline; calibrated needs a profile measured at that tp)"),
    ("num_replicas", "replicas of a cluster behind router= (each its own cache and scheduler, sized as one engine)"),
    ("router=NAME", "the cluster's routing policy (policies/routing/), read when num_replicas > 1"),
    ("cluster_bound", "num_replicas > 1: replay the requests through one cache of the cluster's capacity (LRU, belady)"),
    ("replica_hardware", "heterogeneous cluster: one hardware preset per replica, e.g. [a100,h100]"),
    ("replica_num_gpu_blocks", "heterogeneous cluster: one num_gpu_blocks per replica, e.g. [4000,8000]"),
    ("cost_model", "calibrated (profiled kernel timings of hardware/model/tp) or roofline (spec-sheet bound)"),
    ("profile", "a calibration profile CSV of your own for cost_model=calibrated; its .meta.json must match"),
    ("report.enabled", "write report.html"),
    ("report.plotlyjs", "inline (page opens offline) or cdn (small page, loads plotly.js from its CDN)"),
    ("progress", "progress bar: auto, on, off"),
    ("+experiment=NAME", "a preset multirun (below); -m KEY=a,b,c sweeps any key; hydra.run.dir / hydra.sweep.dir: outputs"),
    ("--config-dir DIR", "also look for hardware/, model/, workload/, experiment/ presets in DIR"),
)


def _defaults() -> dict[str, object]:
    from apcsim.config import SimConfig

    cfg, out = SimConfig(), {}
    for key in ("block_size", "num_gpu_blocks", "gpu_memory_utilization", "max_concurrency", "seed", "tp",
                "cost_model", "profile", "progress", "num_replicas", "cluster_bound"):
        v = getattr(cfg, key)
        out[key] = "unset" if v is None else getattr(v, "name", v)
    out["report.enabled"], out["report.plotlyjs"] = cfg.report.enabled, cfg.report.plotlyjs
    return out


def _config_defaults() -> dict[str, str]:
    """The group defaults of conf/config.yaml (`- hardware: a100` ...)."""
    text = (Path(str(resources.files("apcsim.conf"))) / "config.yaml").read_text()
    return {f"{g}=NAME": v for g, v in re.findall(r"^\s*-\s*(\w+):\s*(\w+)\s*$", text, re.M)}


def first_sentence(doc: str | None, width: int = 88) -> str:
    text = " ".join((doc or "").split())
    m = re.match(r"(.+?[.;])(\s|$)", text)
    line = (m.group(1) if m else text).rstrip(".;:")
    return line if len(line) <= width else line[: width - 3].rstrip() + "..."


def _doc_of(obj) -> str:
    doc = obj.__doc__ if obj.__doc__ and obj.__doc__ is not type(obj).__doc__ else None
    if not doc:
        doc = importlib.import_module(obj.__module__).__doc__
    return first_sentence(doc)


def _yaml_presets(group: str) -> list[tuple[str, str]]:
    """Shipped presets of a group, with the first comment line of each file."""
    root = Path(str(resources.files("apcsim.conf"))) / group
    out = []
    for p in sorted(root.glob("*.yaml")):
        comments = [ln[1:].strip() for ln in p.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
        out.append((p.stem, first_sentence(" ".join(comments))))
    return out


def _section(title: str, rows: list[tuple[str, str]]) -> list[str]:
    width = max((len(n) for n, _ in rows), default=0)
    return [f"{title}:"] + [f"  {n:<{width}}  {d}".rstrip() for n, d in rows] + [""]


def listing() -> str:
    from apcsim.calibration.profile import available_profiles
    from apcsim.config import register_configs
    from apcsim.hf_config import bundled_hf_configs
    from apcsim.workloads import WORKLOADS
    from policies.registry import EVICTION_POLICIES, ROUTING_POLICIES, SCHEDULING_POLICIES

    register_configs()
    defaults = {**_defaults(), **_config_defaults()}
    keys = []
    for key, what in KEYS:
        d = defaults.get(key)
        keys.append((key, what if key not in defaults else f"{what} [{d}]"))
    lines = ["usage: python -m apcsim [KEY=VALUE ...]        one run (outputs/<date>/<time>/)",
             "       python -m apcsim -m KEY=a,b ...         a sweep (multirun/...: sweep.csv, sweep.html)",
             "       python -m apcsim --help | list          this page;  --cfg job: the composed config;  --hydra-help",
             ""]
    lines += _section("keys [default]", keys)
    lines += _section("policies (+policy=)", [(n, _doc_of(e.cls)) for n, e in sorted(EVICTION_POLICIES.items())])
    lines += _section("schedulers (scheduler=)", [(n, _doc_of(e.cls)) for n, e in sorted(SCHEDULING_POLICIES.items())])
    lines += _section("routers (router=, num_replicas > 1)", [(n, _doc_of(e.cls)) for n, e in sorted(ROUTING_POLICIES.items())])
    lines += _section("workloads (workload=)", [(n, _doc_of(e.build)) for n, e in sorted(WORKLOADS.items())])
    lines += _section("hardware (hardware=)", _yaml_presets("hardware"))
    lines += _section("models (model=)", _yaml_presets("model"))
    lines += _section("experiment presets (+experiment=)", _yaml_presets("experiment"))
    lines += _section("bundled Hugging Face configs (model.hf_config=)", [(n, "") for n in bundled_hf_configs()])
    lines += _section("bundled calibration profiles (cost_model=calibrated)",
                      [(p, "") for p in available_profiles()])
    return "\n".join(lines).rstrip() + "\n"


def wants_listing(argv: list[str]) -> bool:
    return argv[:1] in (["list"], ["--help"], ["-h"])
