"""Bad input, case by case: every one ends in ONE line on stderr that says what is wrong and where
(file and line for traces), exit status 2 and no traceback. The CLI runs in-process here (the
same entry point and one-line folding as `python -m apcsim`, ~50x cheaper than a subprocess);
tests/cli/test_cli.py runs a few of the same through a real subprocess.

And the other half of the contract: a request that alone can never fit is not an input error;
it is rejected with its reason in requests.csv and the run goes on."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest

from apcsim.cli.entry import entry
from policies.registry import EVICTION_POLICIES, SCHEDULING_POLICIES
from tests.helpers import ROOT

# Hydra lists every registered option, sorted: the message must name them all.
KNOWN_POLICIES = ", ".join(sorted(EVICTION_POLICIES))
KNOWN_SCHEDULERS = ", ".join(sorted(SCHEDULING_POLICIES))
_CONF = ROOT / "apcsim" / "conf"
KNOWN_HARDWARE = ", ".join(sorted(p.stem for p in (_CONF / "hardware").glob("*.yaml")))
KNOWN_MODELS = ", ".join(sorted(p.stem for p in (_CONF / "model").glob("*.yaml")))

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
     "line 1: output_length must be an integer >= 1, got 2.5"),
    ("json_zero_length", "t.jsonl", _jsonl(MC_OK, {**MC_OK, "input_length": 0}), ["workload=mooncake"],
     "line 2: input_length must be an integer >= 1, got 0"),
    ("json_negative_output", "t.jsonl", _jsonl({**MC_OK, "output_length": -3}), ["workload=mooncake"],
     "line 1: output_length must be an integer >= 1, got -3"),
    ("json_zero_output", "t.jsonl", _jsonl({**MC_OK, "output_length": 0}), ["workload=mooncake"],
     "line 1: output_length must be an integer >= 1, got 0 (a request emits at least one token; strict_lengths=false "
     "serves it as 1)"),
    ("json_duplicate_key", "t.jsonl", _jsonl(MC_OK, '{"timestamp": 1, "input_length": 1024, "input_length": 9, '
                                             '"output_length": 4, "hash_ids": [1, 2]}'),
     ["workload=mooncake"], "t.jsonl, line 2: duplicate field 'input_length'"),
    ("json_infinity_first_line", "t.jsonl", _jsonl('{"timestamp": Infinity, "input_length": 1024, "output_length": 4, '
                                                   '"hash_ids": [1, 2]}', MC_OK),
     ["workload=mooncake"], "t.jsonl, line 1: not valid json (infinity is not a json number)"),
    ("json_overflowing_number", "t.jsonl", _jsonl('{"timestamp": 1e400, "input_length": 1024, "output_length": 4, '
                                                  '"hash_ids": [1, 2]}'),
     ["workload=mooncake"], "t.jsonl, line 1: timestamp must be a finite number >= 0, got inf"),
    ("json_overflowing_length", "t.jsonl", _jsonl('{"timestamp": 0, "input_length": 1e400, "output_length": 4, '
                                                  '"hash_ids": [1, 2]}'),
     ["workload=mooncake"], "t.jsonl, line 1: input_length must be an integer >= 1, got inf"),
    ("trace_fewer_than_asked", "t.jsonl", _jsonl(MC_OK, MC_OK), ["workload=mooncake", "workload.num_requests=1000000"],
     "workload.num_requests=1000000 but the mooncake workload has only 2 requests in t.jsonl; ask for at most 2"),
    ("json_negative_time", "t.jsonl", _jsonl({**MC_OK, "timestamp": -1.5}), ["workload=mooncake"],
     "line 1: timestamp must be a finite number >= 0, got -1.5"),
    ("json_time_backwards", "t.jsonl", _jsonl({**MC_OK, "timestamp": 5}, MC_OK), ["workload=mooncake"],
     "line 2: timestamps must not decrease"),
    ("json_hash_ids_length", "t.jsonl", _jsonl({**MC_OK, "hash_ids": [1, 2, 3]}), ["workload=mooncake"],
     "line 1: 3 hash_ids for input_length 1024, expected 2 with hash_block_size=512"),
    ("json_hash_ids_type", "t.jsonl", _jsonl({**MC_OK, "hash_ids": ["a"]}), ["workload=mooncake"],
     "line 1: hash_ids must be a non-empty list of integers"),
    ("json_hash_ids_bool", "t.jsonl", _jsonl({**MC_OK, "hash_ids": [1, True]}), ["workload=mooncake"],
     "line 1: hash_ids must be a non-empty list of integers"),
    ("json_hash_ids_float", "t.jsonl", _jsonl({**MC_OK, "hash_ids": [1, 2.0]}), ["workload=mooncake"],
     "line 1: hash_ids must be a non-empty list of integers"),
    ("json_hash_ids_too_big", "t.jsonl", _jsonl({**MC_OK, "hash_ids": [1, 2**63]}), ["workload=mooncake"],
     "line 1: hash_ids must fit in 64-bit signed integers"),
    ("json_hash_ids_too_small", "t.jsonl", _jsonl({**MC_OK, "hash_ids": [-(2**63) - 1, 2]}), ["workload=mooncake"],
     "line 1: hash_ids must fit in 64-bit signed integers"),
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
     "line 2: need contexttokens >= 1 and generatedtokens >= 1, got 0, 5"),
    ("csv_zero_output", "t.csv", AZ_HEAD + "2023-11-16 18:00:01.0,10,0\n", ["workload=azure"],
     "line 2: need contexttokens >= 1 and generatedtokens >= 1, got 10, 0"),
    ("csv_time_backwards", "t.csv", AZ_HEAD + "2023-11-16 18:00:05.0,10,5\n" + AZ_OK, ["workload=azure"],
     "line 3: timestamps must not decrease"),
    ("csv_no_rows", "t.csv", AZ_HEAD, ["workload=azure"], "t.csv: no requests in trace"),
    # -- config
    # unknown keys: with or without `+`, the same answer naming the closest valid keys
    ("unknown_key", None, None, ["foo=1"], "unknown config key 'foo'; the keys at the top level are: block_size, "),
    ("unknown_nested_key", None, None, ["workload.colour=red"],
     "unknown config key 'workload.colour'; the keys under workload are: name, arrival, request_rate, num_requests"),
    ("unknown_key_plus", None, None, ["+block_sise=32"],
     "unknown config key 'block_sise'; did you mean block_size (block_size=32)?"),
    ("unknown_key_no_plus", None, None, ["block_sise=32"],
     "unknown config key 'block_sise'; did you mean block_size (block_size=32)?"),
    ("unknown_group_plus", None, None, ["+polcy=lru"],
     "unknown config key 'polcy'; did you mean policy (a config group: +policy=lru)?"),
    ("unknown_group_nested_plus", None, None, ["+schedular.max_num_seqs=4"],
     "did you mean scheduler (scheduler.max_num_seqs=4)?"),
    ("unknown_group_no_plus", None, None, ["polcy=lru"],
     "unknown config key 'polcy'; did you mean policy (a config group: +policy=lru)?"),
    ("unknown_group_nested_no_plus", None, None, ["schedular.max_num_seqs=4"],
     "unknown config key 'schedular' (in schedular.max_num_seqs); did you mean scheduler (scheduler.max_num_seqs=4)?"),
    ("unknown_nested_plus", None, None, ["+workload.num_request=10"],
     "unknown config key 'workload.num_request'; did you mean workload.num_requests"),
    ("key_of_another_option", None, None, ["workload.path=t.jsonl"], "path is a key of workload=azure/mooncake"),
    ("policy_twice", None, None, ["+policy=lru", "+policy=lfu"],
     "policy is selected more than once on the command line (the last: lfu); give +policy=... once"),
    ("unquoted_space_in_path", None, None, ["workload=mooncake", "workload.path=my", "trace.jsonl"],
     "error parsing override 'trace.jsonl'; missing equal at '<eof>'; an override is key=value in one shell word: "
     "a value with spaces or special characters needs quotes"),
    ("options_after_overrides", None, None, ["workload.num_requests=2", "-m", "seed=0,1"],
     "hydra's options (-m/--multirun, --cfg, ...) go before the overrides"),
    ("single_run_with_sweep_dir", None, None, ["hydra.sweep.dir=sw"],
     "hydra.sweep.dir=sw applies to a multirun (-m); a single run writes to hydra.run.dir"),
    ("multirun_with_run_dir", None, None, ["-m", "seed=0,1"],
     "applies to a single run; a multirun (-m or an experiment's hydra.mode=multirun) writes its jobs under "
     "hydra.sweep.dir"),
    ("unknown_policy", None, None, ["+policy=lur"], f"available options in 'policy': {KNOWN_POLICIES}"),
    ("unknown_scheduler", None, None, ["scheduler=sjf"], f"available options in 'scheduler': {KNOWN_SCHEDULERS}"),
    ("unknown_workload", None, None, ["workload=nope"], "available options in 'workload': azure, mooncake, multiturn"),
    ("unknown_hardware", None, None, ["hardware=tpu"], f"available options in 'hardware': {KNOWN_HARDWARE}"),
    ("unknown_model", None, None, ["model=gpt5"], f"available options in 'model': {KNOWN_MODELS}"),
    ("unknown_hash", None, None, ["hash_algo=md5"], "unknown hash_algo 'md5'; known: xxh3_64, xxh3_128, sha256"),
    ("block_size_zero", None, None, ["block_size=0"], "block_size must be >= 1, got 0"),
    ("block_size_negative", None, None, ["block_size=-16"], "block_size must be >= 1, got -16"),
    ("block_size_float", None, None, ["block_size=1.5"], "block_size=1.5"),
    ("block_size_text", None, None, ["block_size=abc"], "could not be converted to integer"),
    ("block_size_huge", None, None, ["block_size=1048576"],
     "block_size=1048576: one kv block of model llama3_8b is 128.0 gib, more than the 56.2 gib left for the kv cache "
     "in 90% of a100's 80.0 gib after weights and activations; lower block_size"),
    ("huge_num_gpu_blocks", None, None, ["num_gpu_blocks=1000000000000"],
     "the block pool of num_gpu_blocks=1000000000000 (192 bytes a block) needs about 174.6 tib of memory, this "
     "machine has"),
    ("huge_num_requests", None, None, ["workload.num_requests=10000000000"],
     "workload.num_requests=10000000000 (512 bytes a request, streamed) needs about 4.7 tib of memory, this machine has"),
    # Belady reads the whole future: every spec, prompt included, exists at once.
    ("huge_num_requests_materialised", None, None, ["workload.num_requests=1000000000", "+policy=belady"],
     "workload.num_requests=1000000000 (4.5 kib a request) needs about 4.2 tib of memory, this machine has"),
    ("synthetic_fewer_than_asked", None, None, ["workload=multiturn", "workload.num_requests=1000"],
     "workload.num_requests=1000 but the multiturn workload has only 256 requests; ask for at most 256"),
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


def run_cli(args: list[str], run_dir: Path | None, capsys) -> tuple[int, str]:
    old = sys.argv
    # A case that starts with an option (-m) puts it first, where Hydra's argparse takes it.
    flags = [a for a in args if a.startswith("-")] if any(a.startswith("-m") for a in args[1:2]) else []
    sys.argv = ["apcsim", *flags, *[a for a in args if a not in flags], *([f"hydra.run.dir={run_dir}"] if run_dir is not None else [])]
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


# -- cases that need a file system state or a fault first: (name, setup(tmp_path, monkeypatch) -> args, expected)
def _trace_dir(tmp, mp):
    (tmp / "traces").mkdir()
    return ["workload=mooncake", "workload.path=traces"]


def _trace_unreadable(tmp, mp):
    """chmod 000, and where that does not bind (root) the same PermissionError injected."""
    import apcsim.workloads.tracefile as tracefile

    path = tmp / "t.jsonl"
    path.write_text(_jsonl(MC_OK))
    path.chmod(0)
    real_open = open

    def deny(p, *a, **k):
        if Path(p) == path:
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *a, **k)

    mp.setattr(tracefile, "open", deny, raising=False)
    return ["workload=mooncake", "workload.path=t.jsonl"]


def _run_dir_is_file(tmp, mp):
    (tmp / "f").write_text("x")
    return ["hydra.run.dir=f"]


def _run_dir_under_file(tmp, mp):
    (tmp / "f").write_text("x")
    return ["hydra.run.dir=f/run"]


def _run_dir_read_only(tmp, mp):
    """A directory without write permission (root ignores the mode: the error is injected there)."""
    import apcsim.outputs.rundir as rundir

    (tmp / "ro").mkdir()
    (tmp / "ro").chmod(0o500)

    def deny(path):
        raise PermissionError(13, "Permission denied", str(path))

    if os.geteuid() == 0:
        mp.setattr(rundir, "_open_lock_file", deny)
    return ["hydra.run.dir=ro/run"]


def _run_dir_held(tmp, mp):
    """Another live process holds the directory."""
    import subprocess

    (tmp / "held").mkdir()
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp / "held" / ".apcsim.lock")], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    mp.setattr(sys.modules[__name__], "_HOLDER", holder)
    return ["hydra.run.dir=held"]


_HOLDER = None


def _memory_error(tmp, mp):
    import apcsim.run

    def boom(*a, **k):
        raise MemoryError()

    mp.setattr(apcsim.run, "simulate", boom)
    return []


SETUP_CASES = [
    ("trace_is_directory", _trace_dir, "workload.path=traces is a directory ("),
    ("trace_permission_denied", _trace_unreadable, "cannot read trace file "),
    ("run_dir_is_file", _run_dir_is_file, "hydra.run.dir=f is a file, not a directory; pick another hydra.run.dir"),
    ("run_dir_under_file", _run_dir_under_file, "hydra.run.dir=f/run is under f, which is a file, not a directory"),
    ("run_dir_read_only", _run_dir_read_only,
     "hydra.run.dir=ro/run is not writable (permission denied); pick a directory you can write to"),
    ("run_dir_in_use", _run_dir_held, "hydra.run.dir=held is in use by another run (pid "),
    ("memory_error", _memory_error, "out of memory (memoryerror) in "),
]


@pytest.mark.parametrize("name,setup,expect", SETUP_CASES, ids=[c[0] for c in SETUP_CASES])
def test_bad_environment_is_one_line_exit_2(tmp_path, monkeypatch, capsys, name, setup, expect):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    args = setup(tmp_path, monkeypatch)
    try:
        run_dir = None if any(a.startswith("hydra.run.dir=") for a in args) else tmp_path / "out"
        code, err = run_cli(["report.enabled=false", "workload.num_requests=4", *args], run_dir, capsys)
    finally:
        if _HOLDER is not None:
            _HOLDER.kill()
            _HOLDER.wait()
        os.chmod(tmp_path, 0o700)
        for p in tmp_path.iterdir():
            os.chmod(p, 0o700)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("apcsim: error: ") and "Traceback" not in err
    assert expect in lines[0].lower(), lines[0]
    if name == "run_dir_in_use":
        assert f"(pid {_HOLDER.pid})" in lines[0]


def test_a_kv_cache_larger_than_the_gpu_is_a_warning_kept_in_run_info(tmp_path, monkeypatch, capsys):
    """The run models a GPU that does not exist (a what-if some sweeps mean), so it goes on, but says so."""
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["report.enabled=false", "workload.num_requests=4", "num_gpu_blocks=40000"],
                        tmp_path / "out", capsys)
    assert code == 0, err
    expect = ("apcsim: warning: num_gpu_blocks=40000 is 78.1 GiB of KV cache (2097152 bytes a block), but a100 has "
              "80.0 GiB and gpu_memory_utilization=0.9 leaves 56.2 GiB after the weights of llama3_8b and "
              "activations: at most 28791 blocks fit")
    assert [line for line in err.splitlines() if line.startswith(expect)], err
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["warnings"][0].startswith(expect.removeprefix("apcsim: warning: "))


def test_sweep_of_a_single_run_directory_says_so(tmp_path, monkeypatch, capsys):
    from apcsim.sweep.__main__ import main as sweep_main

    monkeypatch.chdir(tmp_path)
    assert run_cli(["report.enabled=false", "workload.num_requests=2"], tmp_path / "run", capsys)[0] == 0
    with pytest.raises(SystemExit) as e:
        sweep_main([str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"apcsim.sweep: error: {tmp_path / 'run'} is one run's directory, not a sweep's"), err


def test_a_header_only_profile_says_it_is_empty(tmp_path):
    from apcsim.calibration.profile import COLUMNS, read_profile

    path = tmp_path / "p.csv"
    path.write_text(",".join(COLUMNS) + "\n")
    with pytest.raises(ValueError, match=r"p.csv: no measurements after the header line \(an empty profile\)"):
        read_profile(path)


# -- the engine (`python -m engine`): the same conventions, prefix "engine: error: "
def _run_engine_cli(args: list[str], run_dir: Path, capsys) -> tuple[int, str]:
    from engine.cli import entry as engine_entry

    old = sys.argv
    sys.argv = ["engine", *args, f"hydra.run.dir={run_dir}"]
    try:
        engine_entry()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = old
    return code, capsys.readouterr().err


def _no_torch(mp):
    mp.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as when it is not installed


def _little_memory(mp):
    import apcsim.hostmem

    pytest.importorskip("torch")
    mp.setattr(apcsim.hostmem, "available_bytes", lambda: 8 * 2**30)  # an 8 GiB machine, whatever this one has


def _needs_torch(mp):
    pytest.importorskip("torch")


ENGINE_CASES = [
    ("engine_without_torch", _no_torch, [],
     "the engine needs pytorch, which is not installed (import of torch halted; none in sys.modules); install the "
     "engine extra: pip install -e '.[engine]'"),
    ("engine_device_gpu", _needs_torch, ["device=gpu"], "device must be auto, cpu, cuda or cuda:n, got 'gpu'"),
    ("engine_8b_on_small_cpu", _little_memory, ["device=cpu"],
     "model llama3_8b on the cpu (29.9 gib of float32 weights + 0.2 gib of kv cache) needs about 30.2 gib of memory, "
     "this machine has 8.0 gib available; use model=tiny"),
    ("engine_unknown_key_plus", lambda mp: None, ["+devise=cpu"], "unknown config key 'devise'; did you mean device"),
]


@pytest.mark.parametrize("name,setup,args,expect", ENGINE_CASES, ids=[c[0] for c in ENGINE_CASES])
def test_engine_bad_input_is_one_line_exit_2(tmp_path, monkeypatch, capsys, name, setup, args, expect):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    setup(monkeypatch)
    code, err = _run_engine_cli(args, tmp_path / "out", capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("engine: error: ") and "Traceback" not in err
    assert expect in lines[0].lower(), lines[0]
    assert json.loads((tmp_path / "out" / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("extra", [["+policy=lru"], ["+policy=lfu", "+experiment=seed_budget"],
                                   *[[f"+experiment={p.stem}"] for p in sorted((_CONF / "experiment").glob("*.yaml"))]])
def test_the_unknown_key_check_keeps_legit_plus_overrides(extra):
    """Group appends (`+policy=`, `+experiment=`) and every experiment preset pass the check."""
    from apcsim.cli.compose import compose_config

    compose_config(extra)


def test_legit_hydra_keys_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["report.enabled=false", "workload.num_requests=2", "+policy=lru", "hydra.job.chdir=false",
                         "hydra.verbose=false"], tmp_path / "out", capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "status.json").read_text())["status"] == "ok"
