"""Workload generators and trace readers: shapes, determinism, prefix structure, bad traces."""

from __future__ import annotations

import importlib
import itertools
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from apcsim.errors import ConfigError, TraceError
from apcsim.workloads import WORKLOADS, WorkloadConfig, build_workload
from apcsim.workloads.azure import AzureConfig, parse_timestamp
from apcsim.workloads.mooncake import MooncakeConfig
from apcsim.workloads.multiturn import MultiturnConfig
from apcsim.workloads.rag import RagConfig
from apcsim.workloads.shared_prefix import SharedPrefixConfig
from apcsim.workloads.system_prompt import SystemPromptConfig

VOCAB = 128256


def build(cfg, seed=0):
    return build_workload(cfg, vocab_size=VOCAB, seed_seq=np.random.SeedSequence(seed))


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.nonzero(a[:n] != b[:n])[0]
    return int(diff[0]) if diff.size else n


def _workload_config_classes(module) -> list[type]:
    """The WorkloadConfig subclasses a module defines (not those it imports)."""
    return [v for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, WorkloadConfig) and v is not WorkloadConfig
            and v.__module__ == module.__name__]


def test_one_file_is_one_workload():
    """Every module under apcsim/workloads that defines a WorkloadConfig subclass registers exactly
    one workload with it; the modules that define none (base, priorities, tracefile, _common) are
    shared machinery and register nothing."""
    import apcsim.workloads as pkg

    helpers = []
    for mod in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"apcsim.workloads.{mod.name}")
        configs = _workload_config_classes(module)
        registered = [e for e in WORKLOADS.values() if e.build.__module__ == module.__name__]
        if configs:
            assert len(registered) == 1, f"{mod.name}.py defines {configs} but registers {len(registered)} workloads"
            assert registered[0].config_cls in configs
        else:
            assert not registered, f"{mod.name}.py registers a workload without a config class of its own"
            helpers.append(mod.name)
    assert len(WORKLOADS) == len(list(pkgutil.iter_modules(pkg.__path__))) - len(helpers)
    assert "base" in helpers and "shared_prefix" not in helpers


def test_workload_modules_are_found_on_disk(tmp_path):
    """A new file in apcsim/workloads is registered by importing the package alone (no list of
    module names to edit): a copy of the package with one more workload module finds it."""
    import shutil

    import apcsim.workloads as pkg

    copy = tmp_path / "apcsim_copy"
    shutil.copytree(Path(pkg.__file__).parents[1], copy / "apcsim",
                    ignore=shutil.ignore_patterns("__pycache__", "traces", "profiles", "hf_configs", "conf"))
    src = (copy / "apcsim" / "workloads" / "system_prompt.py").read_text()
    (copy / "apcsim" / "workloads" / "extra_prompt.py").write_text(
        src.replace('register_workload("system_prompt"', 'register_workload("extra_prompt"')
           .replace("class SystemPromptConfig", "class ExtraPromptConfig")
           .replace("SystemPromptConfig", "ExtraPromptConfig"))
    code = "import apcsim.workloads as w; print(w.__file__); print(' '.join(sorted(w.WORKLOADS)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(copy)}, check=True).stdout.split("\n")
    assert out[0].startswith(str(copy)), out
    assert "extra_prompt" in out[1].split() and "system_prompt" in out[1].split()


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_every_workload_builds_deterministically(name):
    cfg = WORKLOADS[name].config_cls(num_requests=20)
    a, b, c = build(cfg, 0), build(cfg, 0), build(cfg, 1)
    assert 1 <= len(a) <= 20
    assert [s.request_id for s in a] == [s.request_id for s in b]
    assert all(np.array_equal(x.prompt_token_ids, y.prompt_token_ids) for x, y in zip(a, b))
    assert any(not np.array_equal(x.prompt_token_ids, y.prompt_token_ids) for x, y in zip(a, c))
    for s in a:
        tokens = s.prompt_token_ids[:]  # every token (made now, for a lazy prompt)
        assert tokens.dtype == np.int32 and len(tokens) == s.prompt_len >= 1 and s.output_len >= 1
        assert 0 <= tokens.min() and tokens.max() < VOCAB
        assert not tokens.flags.writeable
    times = [s.arrival_time for s in a]
    assert times == sorted(times)


def test_system_prompt_structure():
    specs = build(SystemPromptConfig(num_requests=4, system_prompt_tokens=100, question_tokens=7))
    for s in specs[1:]:
        assert common_prefix(specs[0].prompt_token_ids, s.prompt_token_ids) == 100
        assert s.prompt_len == 107


@pytest.mark.parametrize("frac", [0.0, 0.25, 1.0])
def test_shared_prefix_fraction(frac):
    specs = build(SharedPrefixConfig(num_requests=6, input_tokens=64, shared_fraction=frac, output_tokens=3))
    shared = round(frac * 64)
    for s in specs[1:]:
        assert common_prefix(specs[0].prompt_token_ids, s.prompt_token_ids) == shared
    assert all(s.output_len == 3 for s in specs)


def test_multiturn_prompts_extend_history():
    specs = build(MultiturnConfig(num_conversations=3, turns=3, system_prompt_tokens=10, message_tokens=5, output_tokens=4, think_time_s=2.0))
    by_id = {s.request_id: s for s in specs}
    assert len(specs) == 9
    for s in specs:
        if s.parent_id is None:
            assert s.think_time_s == 0.0
            continue
        p = by_id[s.parent_id]
        history = np.concatenate([p.prompt_token_ids, p.output_token_ids])
        assert np.array_equal(s.prompt_token_ids[: len(history)], history)
        assert s.prompt_len == len(history) + 5 and s.think_time_s == 2.0
    firsts = [s for s in specs if s.parent_id is None]
    assert common_prefix(firsts[0].prompt_token_ids, firsts[1].prompt_token_ids) == 10


def test_poisson_arrivals_leave_follow_ups_to_their_parents():
    cfg = MultiturnConfig(num_conversations=50, turns=2, arrival="poisson", request_rate=10.0)
    specs = build(cfg)
    roots = sorted(s.arrival_time for s in specs if s.parent_id is None)
    assert roots[0] == 0.0 and 2.0 < roots[-1] < 10.0  # ~49 gaps of mean 0.1 s
    assert all(s.arrival_time == 0.0 for s in specs if s.parent_id is not None)


def test_request_rate_alone_means_poisson_and_contradictions_fail():
    specs = build(SharedPrefixConfig(num_requests=30, input_tokens=8, request_rate=5.0))
    assert specs[-1].arrival_time > 0
    with pytest.raises(ConfigError, match="request_rate"):
        build(SharedPrefixConfig(num_requests=3, arrival="burst", request_rate=5.0))
    with pytest.raises(ConfigError, match="arrival"):
        build(SharedPrefixConfig(num_requests=3, arrival="sometimes"))


def test_rag_reuses_popular_chunks_and_sorting_helps():
    cfg = RagConfig(num_requests=200, num_documents=50, chunk_tokens=16, chunks_per_request=3, zipf_alpha=1.2,
                    system_prompt_tokens=4, question_tokens=5)
    specs = build(cfg)
    assert all(s.prompt_len == 4 + 3 * 16 + 5 for s in specs)
    first_chunks = {tuple(s.prompt_token_ids[4:20]) for s in specs}
    assert len(first_chunks) < 50  # Zipf: popular documents come again
    def mean_shared(specs):
        return np.mean([max(common_prefix(a.prompt_token_ids, b.prompt_token_ids) for b in specs[:i]) for i, a in enumerate(specs) if i])
    assert mean_shared(build(RagConfig(**{**cfg.__dict__, "sort_chunks": True}))) > mean_shared(specs)
    with pytest.raises(ConfigError, match="chunks_per_request"):
        build(RagConfig(num_documents=2, chunks_per_request=3))


def test_mooncake_equal_hash_ids_mean_equal_tokens():
    specs = build(MooncakeConfig(num_requests=200))
    assert len(specs) == 200
    lines = [json.loads(line) for line in open(_bundled("mooncake/synthetic_trace.jsonl"))][:200]
    assert [s.prompt_len for s in specs] == [r["input_length"] for r in lines]
    assert [s.output_len for s in specs] == [max(1, r["output_length"]) for r in lines]
    assert specs[-1].arrival_time == pytest.approx((lines[-1]["timestamp"] - lines[0]["timestamp"]) / 1000)
    checked = 0
    for i in range(len(lines)):
        for j in range(i):
            a, b = lines[i]["hash_ids"], lines[j]["hash_ids"]
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            cp = common_prefix(specs[i].prompt_token_ids, specs[j].prompt_token_ids)
            full = min(k * 512, specs[i].prompt_len, specs[j].prompt_len)
            assert cp >= full  # equal ids -> equal tokens
            if k < min(len(a), len(b)):
                assert cp < (k + 1) * 512  # a differing id differs somewhere in its block
            checked += k > 0
    assert checked > 10  # pairs of requests that share a prefix


def _bundled(rel):
    from apcsim.workloads.tracefile import BUNDLED_TRACES

    return BUNDLED_TRACES / rel


def test_mooncake_time_scale_and_first_n_independent_of_the_rest():
    a = build(MooncakeConfig(num_requests=10))
    b = build(MooncakeConfig(num_requests=20, time_scale=0.5))
    for x, y in zip(a, b):
        assert np.array_equal(x.prompt_token_ids, y.prompt_token_ids)
        assert y.arrival_time == pytest.approx(0.5 * x.arrival_time)


def _shared_blocks(specs, block: int) -> list[int]:
    """Per request: leading whole blocks of `block` tokens equal to some earlier request's."""
    seen: set[bytes] = set()
    out = []
    for sp in specs:
        t = sp.prompt_token_ids
        heads = [t[: k * block].tobytes() for k in range(1, len(t) // block + 1)]
        out.append(sum(1 for _ in itertools.takewhile(lambda h: h in seen, heads)))
        seen.update(heads)
    return out


def test_mooncake_length_scale_keeps_the_reuse_exact():
    """1/16 of every length: 512-token hash blocks become 32 tokens, and which requests share how
    many leading blocks is exactly as in the full-length trace."""
    full = build(MooncakeConfig(num_requests=300))
    small = build(MooncakeConfig(num_requests=300, length_scale=0.0625))
    assert _shared_blocks(small, 32) == _shared_blocks(full, 512) and sum(_shared_blocks(full, 512)) > 0
    for f, s in zip(full, small):
        assert s.prompt_len == -(-f.prompt_len // 16) and s.output_len == max(1, round(f.output_len / 16))
        assert s.arrival_time == f.arrival_time
    with pytest.raises(ConfigError, match="whole number of tokens"):
        build(MooncakeConfig(num_requests=3, length_scale=0.001))
    with pytest.raises(ConfigError, match="length_scale must be"):
        build(MooncakeConfig(num_requests=3, length_scale=0.0))


@pytest.mark.parametrize("line,match", [
    ("not json", "line 2: not valid JSON"),
    ('{"timestamp": 1, "input_length": 10, "output_length": 1}', "line 2: missing field 'hash_ids'"),
    ('{"timestamp": 1, "input_length": -3, "output_length": 1, "hash_ids": [1]}', "line 2: input_length must be"),
    ('{"timestamp": 1, "input_length": 10, "output_length": 1, "hash_ids": []}', "line 2: hash_ids must be"),
    ('{"timestamp": 9, "input_length": 600, "output_length": 1, "hash_ids": [1]}', "line 2: 1 hash_ids for input_length 600"),
    ('{"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [1]}', "line 2: timestamp must be"),
])
def test_mooncake_bad_lines_name_file_and_line(tmp_path, line, match):
    p = tmp_path / "t.jsonl"
    p.write_text('{"timestamp": 5, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n' + line + "\n")
    with pytest.raises(TraceError, match=match) as e:
        build(MooncakeConfig(path=str(p)))
    assert str(p) in str(e.value)


def test_mooncake_decreasing_time_and_missing_file(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"timestamp": 5, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n'
                 '{"timestamp": 4, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n')
    with pytest.raises(TraceError, match="line 2: timestamps must not decrease"):
        build(MooncakeConfig(path=str(p)))
    with pytest.raises(TraceError, match="not found"):
        build(MooncakeConfig(path=str(tmp_path / "nope.jsonl")))


def test_mooncake_loose_lengths_pad_and_cut(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"timestamp": "1000000000", "input_length": 10, "output_length": 0, "hash_ids": [7]}\n'
                 '{"timestamp": "3000000000", "input_length": 3, "output_length": 2, "hash_ids": [7, 8]}\n')
    specs = build(MooncakeConfig(path=str(p), hash_block_size=4, timestamp_unit="ns", strict_lengths=False))
    assert [s.prompt_len for s in specs] == [10, 3] and specs[0].output_len == 1
    assert np.array_equal(specs[0].prompt_token_ids[:3], specs[1].prompt_token_ids)
    assert specs[1].arrival_time == pytest.approx(2.0)


def test_azure_reader(tmp_path):
    specs = build(AzureConfig(path="azure_llm_2023/AzureLLMInferenceTrace_code.csv", num_requests=50))
    assert len(specs) == 50 and specs[0].prompt_len == 4808 and specs[0].output_len == 10
    assert specs[1].arrival_time == pytest.approx(0.052, abs=1e-6)
    assert parse_timestamp("2023-11-16 18:17:04.0319600") - parse_timestamp("2023-11-16 18:17:03.9799600") == pytest.approx(0.052)
    p = tmp_path / "a.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,12,3\n2023-11-16 18:17:04.0,x,3\n")
    with pytest.raises(TraceError, match="line 3: token counts"):
        build(AzureConfig(path=str(p)))
    p.write_text("time,in,out\n")
    with pytest.raises(TraceError, match="line 1: expected a header"):
        build(AzureConfig(path=str(p)))
