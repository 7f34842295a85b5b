"""`python -m engine.validate_suite suite=h100 [only=GLOB,..] [shard=I/N] [out=DIR] [max_wall_s=S] [profile=PATH] [record=DIR] [set=KEY=VALUE ...]`:
run a validation matrix (`apcsim/conf/validation/<suite>.yaml`: workloads x policies x block
sizes, plus extra runs) through `engine.validate`, one run directory each under `out`, and
collect `suite.csv` (one row per run and metric) and `table.md`.

`record=DIR` also saves each run as a recorded bundle, `DIR/<run name>/` (engine.recorded).

Every `set=KEY=VALUE` (repeatable) is appended to every run's overrides, after the suite's own:
e.g. `set=cuda_graphs=padded` to run a CPU suite through the decode-graph path.

Runs whose `validation.json` exists in `out` are skipped, so a matrix larger than one device call
is finished by calling again with the same `out`; `max_wall_s` stops before starting a run once
that much wall time has passed (a run takes about a minute on the H100: leave that margin).
Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import sys
import time
from importlib import resources
from pathlib import Path

from omegaconf import OmegaConf

from apcsim.errors import ApcsimError, ConfigError, exit_bad_input

PROG = "engine.validate_suite"


def suite_path(name: str) -> Path:
    return Path(str(resources.files("apcsim") / "conf" / "validation" / f"{name}.yaml"))


def load_suite(name: str) -> dict[str, list[str]]:
    """{run name: overrides}, in the file's order: workload-policy-block_size, then extra runs."""
    p = suite_path(name)
    if not p.is_file():
        have = sorted(q.stem for q in p.parent.glob("*.yaml"))
        raise ConfigError(f"no validation suite {name!r} (have: {', '.join(have)})")
    s = OmegaConf.to_container(OmegaConf.load(p))
    common = list(s.get("common", []))
    runs: dict[str, list[str]] = {}
    for wname, wov in s.get("workloads", {}).items():
        for policy in s["policies"]:
            for bs in s["block_sizes"]:
                runs[f"{wname}-{policy}-{bs}"] = [*common, *wov, f"+policy={policy}", f"block_size={bs}"]
    for rname, rov in (s.get("extra_runs") or {}).items():
        runs[rname] = [*common, *rov]
    return runs


def select(runs: dict[str, list[str]], only: str | None, shard: str | None) -> dict[str, list[str]]:
    names = list(runs)
    if only:
        pats = only.split(",")
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in pats)]
    if shard:
        try:
            i, n = (int(x) for x in shard.split("/"))
            assert 0 <= i < n
        except (ValueError, AssertionError):
            raise ConfigError(f"shard must be I/N with 0 <= I < N, got {shard!r}") from None
        names = names[i::n]
    return {n: runs[n] for n in names}


def run_one(name: str, overrides: list[str], run_dir: Path) -> dict:
    """One validation run in `run_dir` (a bundle too when the overrides have record=DIR)."""
    from apcsim.cli.compose import compose_config
    from engine.validate import register_validate_config, run_validation, write_validation

    register_validate_config()
    cfg = compose_config(overrides, config_name="engine_validate")
    out = run_validation(cfg)
    write_validation(out, run_dir, cfg, overrides)
    (run_dir / "overrides.json").write_text(json.dumps(overrides) + "\n")
    comparison = out.comparison
    del out, cfg
    release_engine_memory()
    return comparison


def release_engine_memory() -> None:
    """Free the finished run's engine before the next one is built. Its model, KV cache and decode
    graphs sit in reference cycles that only the cyclic collector frees, and the caching
    allocator keeps freed blocks: without both, a second Llama-3-8B run would not fit."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - the engine extra installs torch
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def collect(out_dir: Path, names: list[str]) -> tuple[list[dict], str]:
    """suite.csv rows and the markdown table of every finished run among `names`."""
    rows, lines = [], []
    metrics = None
    for name in names:
        vp = out_dir / name / "validation.json"
        if not vp.is_file():
            continue
        v = json.loads(vp.read_text())
        info = json.loads((out_dir / name / "validation_info.json").read_text())
        if metrics is None:
            metrics = list(v)
            lines += ["| run | " + " | ".join(metrics) + " | decisions equal |",
                      "|---|" + "---|" * (len(metrics) + 1)]
        cells = []
        for m in metrics:
            e = v[m]
            rows.append({"run": name, "metric": m, "sim": e["sim"], "engine": e["engine"], "error_pct": e["error_pct"],
                         "abs_error": e["abs_error"], "within_goal": e["within_goal"]})
            if m == "prefix_cache_hit_rate":
                cells.append("n/a" if e["abs_error"] is None else f"{100 * e['abs_error']:+.2f} pt")
            elif e["error_pct"] is None:
                cells.append("n/a" if e["abs_error"] is None else f"{e['abs_error']:+g}")
            else:
                cells.append(f"{e['error_pct']:+.1f} %")
        d = info["decisions"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {d['requests_compared'] - d['requests_differing']}"
                     f"/{d['requests_compared']} |")
    return rows, "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    opts = {"suite": None, "only": None, "shard": None, "out": None, "max_wall_s": None, "profile": None,
            "record": None}
    sets: list[str] = []
    for a in argv:
        k, sep, v = a.partition("=")
        if sep and k == "set":
            if "=" not in v:
                raise ConfigError(f"set= takes an override KEY=VALUE, got {a!r}")
            sets.append(v)
            continue
        if not sep or k not in opts:
            raise ConfigError(f"unknown argument {a!r}; expected key=value with key in {', '.join([*opts, 'set'])}")
        opts[k] = v
    if not opts["suite"]:
        raise ConfigError("suite= is required (a file of apcsim/conf/validation/)")
    runs = select(load_suite(opts["suite"]), opts["only"], opts["shard"])
    if not runs:
        raise ConfigError("no run of the suite matches only=/shard=")
    out_dir = Path(opts["out"] or f"outputs/validate_suite/{opts['suite']}")
    limit = float(opts["max_wall_s"]) if opts["max_wall_s"] else None
    extra = ([f"profile={opts['profile']}"] if opts["profile"] else []) + sets
    t0 = time.perf_counter()
    for name, ov in runs.items():
        run_dir = out_dir / name
        if (run_dir / "validation.json").is_file():
            print(f"{name}: done before, skipped")
            continue
        if limit is not None and time.perf_counter() - t0 > limit:
            print(f"{name}: not started (max_wall_s={limit:g} reached)")
            continue
        t = time.perf_counter()
        rec = [f"record={Path(opts['record']) / name}"] if opts["record"] else []
        comparison = run_one(name, [*ov, *extra, *rec], run_dir)
        ok = sum(1 for v in comparison.values() if v["within_goal"])
        print(f"{name}: {ok}/{len(comparison)} metrics within goal ({time.perf_counter() - t:.0f}s)", flush=True)
    rows, table = collect(out_dir, list(load_suite(opts["suite"])))
    with (out_dir / "suite.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["run", "metric", "sim", "engine", "error_pct", "abs_error", "within_goal"])
        w.writeheader()
        w.writerows(rows)
    (out_dir / "table.md").write_text(table)
    print(table)
    print(f"wrote {out_dir / 'suite.csv'} and {out_dir / 'table.md'}")
    return 0


def entry() -> None:
    try:
        sys.exit(main(sys.argv[1:]))
    except ApcsimError as e:
        exit_bad_input(PROG, str(e))


if __name__ == "__main__":
    entry()
