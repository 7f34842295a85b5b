"""Bad input, case by case: every one ends in ONE line on stderr that says what is wrong and where
(file and line for traces), exit status 2 and no traceback. The CLI runs in-process here (the
same entry point and one-line folding as `python -m apcsim`, ~50x cheaper than a subprocess);
tests/test_cli.py runs a few of the same through a real subprocess.

And the other half of the contract: a request that alone can never fit is not an input error;
it is rejected with its reason in requests.csv and the run goes on."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from apcsim.cli import entry
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES

# Hydra lists every registered option, sorted: the message must name them all.
KNOWN_POLICIES = ", ".join(sorted(EVICTION_POLICIES))
KNOWN_SCHEDULERS = ", ".join(sorted(SCHEDULING_POLICIES))
_CONF = Path(__file__).resolve().parents[1] / "apcsim" / "conf"
KNOWN_HARDWARE = ", ".join(sorted(p.stem for p in (_CONF / "hardware").glob("*.yaml")))

MC_OK = {"timestamp": 0, "input_length": 1024, "output_length": 4, "hash_ids": [1, 2]}


def _jsonl(*lines) -> str:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)


AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZ_OK = "2023-11-16 18:00:00.0,100,5\n"

# (name, trace file name, its content or None, overrides, expected lower-cased fragment)
CASES = [
    # -- Mooncake JSONL traces
    ("json_malformed", "t.jsonl", _jsonl(MC_OK, "{oops"), ["workload=mooncake"], "t.jsonl, line 2: not valid json"),
    ("json_not_object", "t.jsonl", _jsonl("[1, 2]"), ["workload=mooncake"], "t.jsonl, line 1: expected a json object"),
    ("json_missing_field", "t.jsonl", _jsonl(MC_OK, {k: v for k, v in MC_OK.items() if k != "hash_ids"}),
     ["workload=mooncake"], "line 2: missing field 'hash_ids'"),
    ("json_extra_field", "t.jsonl", _jsonl({**MC_OK, "prompt": "hi"}), ["workload=mooncake"],
     "line 1: unknown field 'prompt' (known: timestamp, input_length, output_length, hash_ids, cache_salt, tenant, "
     "priority, retention_priority, retention_duration_s)"),
    ("json_wrong_type", "t.jsonl", _jsonl({**MC_OK, "input_length": "long"}), ["workload=mooncake"],
     "line 1: input_length must be an integer >= 1, got 'long'"),
    ("json_float_length", "t.jsonl", _jsonl({**MC_OK, "output_length": 2.5}), ["workload=mooncake"],
     "line 1: output_length must be an integer >= 0, got 2.5"),
    ("json_zero_length", "t.jsonl", _jsonl(MC_OK, {**MC_OK, "input_length": 0}), ["workload=mooncake"],
     "line 2: input_length must be an integer >= 1, got 0"),
    ("json_negative_output", "t.jsonl", _jsonl({**MC_OK, "output_length": -3}), ["workload=mooncake"],
     "line 1: output_length must be an integer >= 0, got -3"),
    ("json_negative_time", "t.jsonl", _jsonl({**MC_OK, "timestamp": -1.5}), ["workload=mooncake"],
     "line 1: timestamp must be >= 0"),
    ("json_time_backwards", "t.jsonl", _jsonl({**MC_OK, "timestamp": 5}, MC_OK), ["workload=mooncake"],
     "line 2: timestamps must not decrease"),
    ("json_hash_ids_length", "t.jsonl", _jsonl({**MC_OK, "hash_ids": [1, 2, 3]}), ["workload=mooncake"],
     "line 1: 3 hash_ids for input_length 1024, expected 2 with hash_block_size=512"),
    ("json_hash_ids_type", "t.jsonl", _jsonl({**MC_OK, "hash_ids": ["a"]}), ["workload=mooncake"],
     "line 1: hash_ids must be a non-empty list of integers"),
    ("json_empty_file", "t.jsonl", "", ["workload=mooncake"], "t.jsonl: no requests in trace"),
    ("json_blank_lines_only", "t.jsonl", "\n\n", ["workload=mooncake"], "no requests in trace"),
    ("json_binary", "t.jsonl", "\x00\xff\xfe garbage", ["workload=mooncake"], "line 1: not valid json"),
    ("trace_missing", "t.jsonl", None, ["workload=mooncake"], "trace file not found: t.jsonl"),
    # -- Azure CSV traces
    ("csv_bad_header", "t.csv", "a,b,c\n" + AZ_OK, ["workload=azure"], "t.csv, line 1: expected a header"),
    ("csv_empty_file", "t.csv", "", ["workload=azure"], "t.csv, line 1: expected a header"),
    ("csv_wrong_type", "t.csv", AZ_HEAD + AZ_OK + "2023-11-16 18:00:01.0,many,5\n", ["workload=azure"],
     "t.csv, line 3: token counts must be integers, got 'many', '5'"),
    ("csv_missing_column", "t.csv", AZ_HEAD + "2023-11-16 18:00:01.0,100\n", ["workload=azure"],
     "line 2: expected 3 columns as in the header, got 2"),
    ("csv_extra_column", "t.csv", AZ_HEAD + "2023-11-16 18:00:01.0,100,5,7\n", ["workload=azure"],
     "line 2: expected 3 columns as in the header, got 4"),
    ("csv_bad_timestamp", "t.csv", AZ_HEAD + "yesterday,100,5\n", ["workload=azure"], "line 2: bad timestamp 'yesterday'"),
    ("csv_zero_length", "t.csv", AZ_HEAD + "2023-11-16 18:00:01.0,0,5\n", ["workload=azure"],
     "line 2: need contexttokens >= 1 and generatedtokens >= 0, got 0, 5"),
    ("csv_time_backwards", "t.csv", AZ_HEAD + "2023-11-16 18:00:05.0,10,5\n" + AZ_OK, ["workload=azure"],
     "line 3: timestamps must not decrease"),
    ("csv_no_rows", "t.csv", AZ_HEAD, ["workload=azure"], "t.csv: no requests in trace"),
    # -- config
    ("unknown_key", None, None, ["foo=1"], "could not override 'foo'"),
    ("unknown_nested_key", None, None, ["workload.colour=red"], "key 'colour' not in"),
    ("unknown_policy", None, None, ["+policy=lur"], f"available options in 'policy': {KNOWN_POLICIES}"),
    ("unknown_scheduler", None, None, ["scheduler=sjf"], f"available options in 'scheduler': {KNOWN_SCHEDULERS}"),
    ("unknown_workload", None, None, ["workload=nope"], "available options in 'workload': azure, mooncake, multiturn"),
    ("unknown_hardware", None, None, ["hardware=tpu"], f"available options in 'hardware': {KNOWN_HARDWARE}"),
    ("unknown_model", None, None, ["model=gpt5"], "available options in 'model': llama3_8b, tiny"),
    ("unknown_hash", None, None, ["hash_algo=md5"], "unknown hash_algo 'md5'; known: xxh3_64, xxh3_128, sha256"),
    ("block_size_zero", None, None, ["block_size=0"], "block_size must be >= 1, got 0"),
    ("block_size_negative", None, None, ["block_size=-16"], "block_size must be >= 1, got -16"),
    ("block_size_float", None, None, ["block_size=1.5"], "block_size=1.5"),
    ("block_size_text", None, None, ["block_size=abc"], "could not be converted to integer"),
    ("cache_too_small", None, None, ["num_gpu_blocks=3"],
     "kv cache (3 blocks of 16 tokens, 2 usable besides the null block) is too small for any request: the smallest needs 128 blocks"),
    ("model_too_big", None, None, ["gpu_memory_utilization=0.1"], "leaves no room for a kv cache"),
    ("conflict_rate_burst", None, None, ["workload.arrival=burst", "workload.request_rate=5"],
     "workload.request_rate contradicts workload.arrival=burst"),
    ("conflict_budget_seqs", None, None, ["scheduler.max_num_batched_tokens=8", "scheduler.max_num_seqs=16"],
     "scheduler.max_num_batched_tokens (8) must be >= scheduler.max_num_seqs (16)"),
    ("zero_requests", None, None, ["workload.num_requests=0"], "workload.num_requests must be an integer >= 1, got 0"),
    ("bad_tenants", None, None, ["workload.num_tenants=-2"], "workload.num_tenants must be an integer >= 1, got -2"),
    ("bad_arrival", None, None, ["workload.arrival=sometimes"], "workload.arrival must be one of trace, burst, poisson"),
]


def run_cli(args: list[str], run_dir: Path, capsys) -> tuple[int, str]:
    old = sys.argv
    sys.argv = ["apcsim", *args, f"hydra.run.dir={run_dir}"]
    try:
        entry()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name,fname,content,args,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, name, fname, content, args, expect):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    if fname is not None:
        if content is not None:
            (tmp_path / fname).write_bytes(content.encode("utf-8", "surrogateescape") if "\x00" not in content
                                           else content.encode("latin-1"))
        args = [*args, f"workload.path={fname}"]
    code, err = run_cli(["report.enabled=false", *args], tmp_path / "out", capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("apcsim: error: ") and "Traceback" not in err
    assert expect in lines[0].lower(), lines[0]


def _read_requests(run_dir: Path) -> list[dict]:
    with (run_dir / "requests.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_request_that_can_never_fit_is_rejected_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """One 40-block request in a 30-block cache (and one over max_model_len), among small ones."""
    big = {"timestamp": 10, "input_length": 600, "output_length": 40, "hash_ids": [7, 8]}
    long_ = {"timestamp": 20, "input_length": 300, "output_length": 10, "hash_ids": [9]}
    small = [{"timestamp": 5 + 30 * i, "input_length": 100, "output_length": 5, "hash_ids": [i + 100]} for i in range(4)]
    (tmp_path / "t.jsonl").write_text(_jsonl(small[0], big, long_, *small[1:]))
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["workload=mooncake", "workload.path=t.jsonl", "workload.hash_block_size=512",
                         "workload.strict_lengths=true", "num_gpu_blocks=30", "block_size=16",
                         "scheduler.max_model_len=256", "+policy=lru", "report.enabled=false"],
                        tmp_path / "out", capsys)
    assert code == 0, err
    rows = {r["request_id"]: r for r in _read_requests(tmp_path / "out")}
    assert len(rows) == 6
    assert rows["mc-1"]["rejected_reason"] == "needs 40 blocks for 640 tokens, the cache has 29"  # 30 less the null block
    assert rows["mc-2"]["rejected_reason"] == "310 tokens exceed max_model_len 256"
    assert rows["mc-1"]["finish_s"] == "" and rows["mc-1"]["ttft_s"] == ""
    for rid in ("mc-0", "mc-3", "mc-4", "mc-5"):
        assert rows[rid]["rejected_reason"] == "" and float(rows[rid]["finish_s"]) > 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["num_rejected"] == 2 and m["num_finished"] == 4
    assert json.loads((tmp_path / "out" / "status.json").read_text())["status"] == "ok"
