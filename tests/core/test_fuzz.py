"""Hypothesis fuzzing of the serving core and the trace readers.

Serving core: random arrivals, prompt lengths and shared prefixes, output lengths, priorities,
tenants, cache sizes, block sizes, step budgets and scheduler options, under every registered
eviction and scheduling policy (parametrized over the registries, so a new policy is fuzzed
without touching this file). After every step and skipped stretch the pool's and the
scheduler's invariants hold (`verify()`); at the end every request is finished with exactly its
output length (preemptions and recomputes included) or rejected with a reason, and hits never
exceed queries.

Trace readers: random bytes, lines and JSON values either parse or raise TraceError, never any
other exception.

Settings are fixed (derandomize=True, no example database), so a run is reproducible and CI
time is bounded (~30 s for the file on the 2-CPU VM).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apcsim.core.request import RequestSpec, Status
from apcsim.errors import TraceError
from apcsim.sim.simulator import Simulation
from apcsim.workloads import WORKLOADS, build_workload
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from tests.helpers.serving import COST, build_scheduler

FUZZ = settings(max_examples=20, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def serving_cases(draw):
    bs = draw(st.sampled_from([1, 2, 4, 16]))
    max_num_seqs = draw(st.integers(1, 6))
    sched = {
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": draw(st.integers(max_num_seqs, 96)),
        "chunked_prefill": draw(st.booleans()),
        "cache_aware_budget": draw(st.booleans()),
        "cache_aware_admission": draw(st.booleans()),
        "long_prefill_token_threshold": draw(st.sampled_from([0, 0, 5, 32])),
        "max_model_len": draw(st.sampled_from([None, None, 40, 200])),
    }
    num_blocks = draw(st.integers(1, 48))
    prefixes = [draw(st.lists(st.integers(0, 5), min_size=0, max_size=40)) for _ in range(3)]
    n = draw(st.integers(1, 14))
    specs, t = [], 0.0
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.001, 0.05, 1.0]))
        prefix = prefixes[draw(st.integers(0, 2))]
        tail = draw(st.lists(st.integers(0, 5), min_size=1 if not prefix else 0, max_size=30))
        specs.append(RequestSpec(
            f"r{i}", np.asarray(prefix + tail, dtype=np.int32), draw(st.integers(1, 24)), arrival_time=t,
            priority=draw(st.integers(0, 3)), cache_salt=draw(st.sampled_from([None, None, "t1"])),
        ))
    return bs, num_blocks, sched, specs, draw(st.booleans()), draw(st.sampled_from([None, 1, 3]))


@pytest.mark.parametrize("scheduling", sorted(SCHEDULING_POLICIES))
@pytest.mark.parametrize("eviction", sorted(EVICTION_POLICIES))
@FUZZ
@given(case=serving_cases())
def test_serving_core_invariants_under_random_load(eviction, scheduling, case):
    check_serving_run(eviction, scheduling, case)


def _spec(rid: str, tokens: list[int], output_len: int, arrival: float, **kw) -> RequestSpec:
    return RequestSpec(request_id=rid, prompt_token_ids=np.array(tokens, dtype=np.int32), output_len=output_len,
                       arrival_time=arrival, **kw)


PRIORITY_SELF_PREEMPTION = (1,
     26,
     {'max_num_seqs': 3,
      'max_num_batched_tokens': 15,
      'chunked_prefill': False,
      'cache_aware_budget': False,
      'cache_aware_admission': True,
      'long_prefill_token_threshold': 0,
      'max_model_len': None},
     [
     _spec('r0', [0, 0, 0, 0, 0, 0], 11, 0.0, priority=0),
     _spec('r1', [0, 0, 0, 0, 0, 0], 1, 0.0, priority=0),
     _spec('r2', [0, 0, 0, 0, 0, 0], 1, 0.0, priority=0),
     _spec('r3', [0], 8, 0.0, priority=0),
     _spec('r4', [0, 0, 0, 0, 0, 0, 0, 0, 0], 5, 0.05, priority=1, cache_salt='t1'),
     _spec('r5', [0, 0], 4, 0.05, priority=0),
     _spec('r6', [1, 0, 0], 2, 0.1, priority=0),
     _spec('r7', [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2, 0.1, priority=0),
     ],
     False,
     None)


@pytest.mark.parametrize("eviction", ["lru", "cost_aware"])
def test_priority_self_preemption_does_not_stall(eviction):
    """Found by this fuzz test: at step 15 the lowest-priority request, first in the running
    pass, preempted itself, the requests after it were skipped (vLLM V1 stops there) and the
    waiting queue too, so the plan was empty and the run ended with 'nothing schedulable'. The
    scheduler now plans again in the same step with the blocks the preemption freed."""
    check_serving_run(eviction, "priority", PRIORITY_SELF_PREEMPTION)


def check_serving_run(eviction, scheduling, case):
    bs, num_blocks, sched_kw, specs, skip_quiet, max_concurrency = case
    # num_blocks usable blocks: one more for vLLM's null block.
    sched = build_scheduler(eviction, scheduling, num_blocks=num_blocks + 1, bs=bs, specs=specs, **sched_kw)
    sim = Simulation(specs, sched, COST, skip_quiet=skip_quiet, max_concurrency=max_concurrency,
                     verify_every_step=True)  # verify() after every step and every skipped stretch
    m = sim.run().summary(sim.requests)
    sched.verify()
    assert not sched.has_work and sched.kv.pool.num_used == 0, "everything released at the end"
    out_tokens = 0
    for r in sim.requests:
        assert r.status in (Status.FINISHED, Status.REJECTED), r
        if r.status is Status.REJECTED:
            assert r.rejected_reason, f"{r.request_id} rejected without a reason"
        else:
            assert not r.rejected_reason
            assert r.num_output_tokens == r.spec.output_len, "exact output despite preemptions"
            assert r.num_computed_tokens == r.prompt_len + r.spec.output_len - 1
            assert 0 <= r.num_cached_tokens <= r.prompt_len - 1
            out_tokens += r.spec.output_len
    assert m["num_finished"] + m["num_rejected"] == len(specs)
    assert m["output_tokens"] == out_tokens
    assert 0 <= m["prefix_cache_hits"] <= m["prefix_cache_queries"]
    assert 0 <= m["preempted_prefix_cache_hits"] <= m["preempted_prefix_cache_queries"]
    if eviction == "none":
        assert m["prefix_cache_hits"] == 0


# -- trace readers ---------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=8,
)
FIELDS = ["timestamp", "input_length", "output_length", "hash_ids", "cache_salt", "tenant"]


@st.composite
def mooncake_lines(draw):
    """Mostly plausible records with random corruption: valid ones, wrong values, missing or
    extra fields, raw garbage lines."""
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["ok", "ok", "mutate", "value", "garbage"]))
        n_ids = draw(st.integers(1, 3))
        rec = {"timestamp": draw(st.integers(0, 50)), "input_length": draw(st.integers(1, n_ids * 8)),
               "output_length": draw(st.integers(0, 5)), "hash_ids": draw(st.lists(st.integers(0, 9), min_size=n_ids,
                                                                                    max_size=n_ids))}
        if kind == "mutate":
            key = draw(st.sampled_from(FIELDS + ["extra"]))
            if draw(st.booleans()):
                rec.pop(key, None)
            else:
                rec[key] = draw(json_values)
            lines.append(json.dumps(rec).encode())
        elif kind == "value":
            lines.append(json.dumps(draw(json_values)).encode())
        elif kind == "garbage":
            lines.append(draw(st.binary(max_size=30)).replace(b"\n", b""))
        else:
            lines.append(json.dumps(rec).encode())
    return b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"]))


def _build(tmp_path, name: str, data: bytes, **opts):
    path = tmp_path / name
    path.write_bytes(data)
    cfg = replace(WORKLOADS[name.split(".")[0]].config_cls(), path=str(path), **opts)
    return build_workload(cfg, vocab_size=1000, seed_seq=np.random.SeedSequence(0))


@FUZZ
@given(data=mooncake_lines(), strict=st.booleans())
def test_mooncake_reader_parses_or_raises_trace_error(tmp_path_factory, data, strict):
    tmp = tmp_path_factory.mktemp("mc")
    try:
        specs = _build(tmp, "mooncake.jsonl", data, hash_block_size=8, strict_lengths=strict)
    except TraceError as e:
        assert str(tmp) in str(e)  # names the file
        return
    assert specs and all(s.prompt_len >= 1 and s.output_len >= 1 for s in specs)


@FUZZ
@given(data=st.binary(max_size=200))
def test_mooncake_reader_on_random_bytes(tmp_path_factory, data):
    try:
        _build(tmp_path_factory.mktemp("mc"), "mooncake.jsonl", data)
    except TraceError:
        pass


cells = st.one_of(st.text(max_size=6), st.integers(-5, 50).map(str),
                  st.sampled_from(["2023-11-16 18:00:00.5", "2023-11-16 18:00:01", "2023-11-16 18:00:0x", ""]))


@st.composite
def azure_text(draw):
    header = draw(st.sampled_from(["TIMESTAMP,ContextTokens,GeneratedTokens",
                                   "TIMESTAMP,ContextTokens,GeneratedTokens,tenant", "TIMESTAMP,x", ""]))
    rows = [",".join(draw(st.lists(cells, min_size=0, max_size=5))) for _ in range(draw(st.integers(0, 5)))]
    text = "\n".join([header, *rows])
    if draw(st.booleans()):
        text += draw(st.text(max_size=10))  # stray quotes, control characters, non-ASCII
    return text.encode("utf-8", "surrogatepass")


@FUZZ
@given(data=st.one_of(azure_text(), st.binary(max_size=120)))
def test_azure_reader_parses_or_raises_trace_error(tmp_path_factory, data):
    tmp = tmp_path_factory.mktemp("az")
    try:
        specs = _build(tmp, "azure.csv", data)
    except TraceError as e:
        assert str(tmp) in str(e)
        return
    assert specs and all(s.prompt_len >= 1 for s in specs)


# -- config overrides: random keys (valid, misspelt, made up; with or without `+`), types and
# values through the real CLI. Every outcome is a run that was accepted, or one line and exit 2;
# never a traceback, and never an accepted unknown key.
def _valid_keys() -> list[str]:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from apcsim.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="apcsim.conf", version_base=None):
        dcfg = compose(config_name="config")

    def leaves(node: dict, prefix=""):
        for k, child in node.items():
            if isinstance(child, dict):  # a group left null is None here: a leaf key
                yield from leaves(child, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    tree = OmegaConf.to_container(dcfg, resolve=False)  # interpolations stay unresolved
    return sorted(k for k in leaves(tree) if not k.startswith(("hardware.", "model.", "experiment")))


VALID_KEYS = _valid_keys()
# Sizes stay small: a valid override must run its checks in well under a second; the two keys
# with a memory refusal also get sizes no machine has.
_VALUES = st.one_of(
    st.sampled_from(["-1", "0", "1", "2", "7", "64", "0.5", "1e-3", "nan", "inf", "-inf", "true", "false", "null",
                     "abc", "''", "[1,2]", "{a: 1}", "a b", "${oops}", "1,2", "x=y", "\"q\"", "é"]),
    st.integers(-3, 70).map(str),
)
_HUGE = {"num_gpu_blocks": "1000000000000", "workload.num_requests": "1000000000"}


@st.composite
def overrides(draw):
    out, unknown = [], False
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["valid", "valid", "typo", "made_up"]))
        key = draw(st.sampled_from(VALID_KEYS))
        if kind == "typo":
            i = draw(st.integers(0, len(key) - 1))
            key = draw(st.sampled_from([key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key + "s"]))
        elif kind == "made_up":
            key = draw(st.from_regex(r"[a-z][a-z_]{0,8}(\.[a-z][a-z_]{0,8})?", fullmatch=True))
        if key not in VALID_KEYS and key.strip("."):
            unknown = unknown or key.split(".")[0] not in ("policy", "hydra") and "" not in key.split(".")
        value = _HUGE[key] if key in _HUGE and draw(st.booleans()) else draw(_VALUES)
        out.append(f"{draw(st.sampled_from(['', '+']))}{key}={value}")
    return out, unknown


class _Accepted(BaseException):
    """The run passed every check; the fuzz stops it there (a BaseException: nothing catches it)."""


def _checks_only(cfg, **_kw):
    from apcsim.run import build_cost_model, check_some_request_fits, num_blocks_for, validate

    validate(cfg)
    build_cost_model(cfg)
    specs = build_workload(cfg.workload, vocab_size=cfg.model.vocab_size, seed_seq=np.random.SeedSequence(cfg.seed))
    check_some_request_fits(specs, num_blocks_for(cfg), cfg.block_size)
    raise _Accepted


@FUZZ
@given(case=overrides())
def test_config_overrides_run_or_fail_in_one_line(tmp_path_factory, case):
    import sys

    import apcsim.run
    from apcsim.cli.entry import entry

    args, unknown = case
    run_dir = tmp_path_factory.mktemp("fuzz-cli")
    accepted, code, err = False, 0, ""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(apcsim.run, "simulate", _checks_only)
        mp.delenv("HYDRA_FULL_ERROR", raising=False)
        mp.setattr(sys, "argv", ["apcsim", *args, f"hydra.run.dir={run_dir}"])
        import io

        buf = io.StringIO()
        mp.setattr(sys, "stderr", buf)
        try:
            entry()
        except _Accepted:
            accepted = True
        except SystemExit as e:
            code = e.code
        err = buf.getvalue()
    assert "Traceback" not in err, (args, err)
    if accepted:
        assert not unknown, f"an unknown key was accepted: {args}"
        return
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("apcsim: error: "), (args, err)
