"""Replay a recorded request sequence through vLLM's own Scheduler and KV cache manager.

Run by the vLLM venv's Python, never imported by apcsim:

    python vllm_replay.py INPUT.json OUTPUT.json

INPUT holds a list of `apcsim.parity.record.Recording.replay_input()`. The model is a stand-in: after each
step it "samples", for every request whose computed tokens reach its known tokens, the next of
that request's recorded output tokens (so a later turn that quotes an answer hits its blocks, as
apcsim's engine teacher-forces them). Everything that decides what runs is vLLM's code: its
Scheduler (waiting queue, token budget, admission, preemption) and its KVCacheManager and
BlockPool (hashing, lookup, the free queue, eviction). This is how vLLM's own tests under
tests/v1/core drive it; on the vLLM CPU build it works at every block size, where the real
engine's CPU attention needs multiples of 32.

Steps are numbered as apcsim numbers them: a vLLM iteration that schedules nothing but
preempts (every runnable request preempted itself) is folded into the next one, because apcsim
plans again within the same step there.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

import torch
import vllm
from vllm import SamplingParams
from vllm.config import CacheConfig, DeviceConfig, ModelConfig, SchedulerConfig, VllmConfig
from vllm.utils.hashing import sha256
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

# A tiny Llama: only its shape reaches the scheduler (no weights are loaded or run).
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 2**31 - 1,
    "max_position_embeddings": 1 << 22, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
}


def build_scheduler(c: dict, model_dir: str) -> Scheduler:
    mc = ModelConfig(model=model_dir, skip_tokenizer_init=True, max_model_len=c["max_model_len"], dtype="float32", seed=0)
    sc = SchedulerConfig(
        max_num_seqs=c["max_num_seqs"], max_num_batched_tokens=c["max_num_batched_tokens"],
        max_model_len=c["max_model_len"], enable_chunked_prefill=c["enable_chunked_prefill"],
        long_prefill_token_threshold=c["long_prefill_token_threshold"], is_encoder_decoder=False,
        policy=c["policy"], scheduler_reserve_full_isl=c["scheduler_reserve_full_isl"],
    )
    cc = CacheConfig(block_size=c["block_size"], enable_prefix_caching=c["enable_prefix_caching"])
    cc.num_gpu_blocks = c["num_gpu_blocks"]
    vc = VllmConfig(model_config=mc, scheduler_config=sc, cache_config=cc, device_config=DeviceConfig("cpu"))
    spec = FullAttentionSpec(block_size=c["block_size"], num_kv_heads=2, head_size=16, dtype=torch.float32)
    kvc = KVCacheConfig(num_blocks=c["num_gpu_blocks"], kv_cache_tensors=[],
                        kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn"], spec)])
    return Scheduler(vllm_config=vc, kv_cache_config=kvc, structured_output_manager=StructuredOutputManager(vc),
                     block_size=c["block_size"], log_stats=True)


def replay(inp: dict) -> dict:
    c = inp["config"]
    with tempfile.TemporaryDirectory() as model_dir:
        with open(os.path.join(model_dir, "config.json"), "w") as f:
            json.dump(TINY_LLAMA, f)
        sched = build_scheduler(c, model_dir)
    init_none_hash(sha256)
    hasher = get_request_block_hasher(c["block_size"], sha256)
    # vLLM breaks priority ties by request id: ids that sort in arrival order make that the
    # arrival order apcsim uses.
    vid = {rid: f"{i:09d}" for i, (_, rid) in enumerate(inp["arrivals"])}
    aid = {v: k for k, v in vid.items()}
    specs = inp["requests"]
    by_step: dict[int, list[str]] = {}
    for step, rid in inp["arrivals"]:
        by_step.setdefault(step, []).append(rid)
    last_arrival_step = max(by_step, default=-1)
    counters = [0, 0, 0, 0]
    steps: list[dict] = []
    folded_preempted: list[str] = []
    step, error = 0, None
    while True:
        for rid in by_step.pop(step, ()):
            s = specs[rid]
            sp = SamplingParams(max_tokens=len(s["outputs"]), ignore_eos=True, detokenize=False)
            sched.add_request(Request(vid[rid], s["prompt"], sp, None, arrival_time=s["arrival_time"],
                                      priority=s["priority"], cache_salt=s["cache_salt"], block_hasher=hasher))
        if not sched.get_num_unfinished_requests():
            if step > last_arrival_step:
                break
            # Idle before apcsim's next arrival: the runs have parted already (apcsim never idles
            # at a step it recorded an arrival for); go on from that arrival so the totals cover
            # the whole workload.
            step = min(by_step)
            continue
        before = {r.request_id: (r.status, r.num_preemptions) for r in sched.requests.values()}
        out = sched.schedule()
        st = sched.kv_cache_manager.make_prefix_cache_stats()
        counters = [counters[0] + st.queries, counters[1] + st.hits,
                    counters[2] + st.preempted_queries, counters[3] + st.preempted_hits]
        preempted = sorted(aid[r] for r, (_, n) in before.items() if sched.requests[r].num_preemptions > n)
        scheduled = out.num_scheduled_tokens
        if not scheduled:
            sched.update_from_output(out, ModelRunnerOutput(req_ids=[], req_id_to_index={}))
            if not preempted:
                error = f"step {step}: vLLM scheduled nothing with {len(sched.running)} running and {len(sched.waiting)} waiting"
                break
            folded_preempted += preempted
            continue
        admitted = {aid[r]: sched.requests[r].num_computed_tokens - n for r, n in scheduled.items()
                    if before[r][0] in (RequestStatus.WAITING, RequestStatus.PREEMPTED)}
        steps.append({"step": step, "scheduled": {aid[r]: n for r, n in scheduled.items()},
                      "preempted": sorted(folded_preempted + preempted), "admitted": admitted, "counters": counters})
        folded_preempted = []
        ids = list(scheduled)
        sampled = []
        for r in ids:
            req = sched.requests[r]
            if req.num_computed_tokens >= req.num_tokens:
                sampled.append([specs[aid[r]]["outputs"][len(req.output_token_ids)]])
            else:
                sampled.append([])  # a prefill chunk that does not end the prompt samples nothing
        sched.update_from_output(out, ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                                                        sampled_token_ids=sampled))
        step += 1
    return {"vllm_version": vllm.__version__, "steps": steps, "error": error,
            "usable_blocks": sched.kv_cache_manager.block_pool.get_num_free_blocks() if error is None else None}


def main() -> None:
    """INPUT holds {"replays": [replay input, ...]}; OUTPUT gets {"results": [...]} in that order
    (one process for many replays: importing vLLM takes seconds, a replay milliseconds to seconds)."""
    if len(sys.argv) != 3:
        sys.exit("usage: vllm_replay.py INPUT.json OUTPUT.json")
    with open(sys.argv[1]) as f:
        inp = json.load(f)
    results = [replay(r) for r in inp["replays"]]
    with open(sys.argv[2], "w") as f:
        json.dump({"results": results}, f)


if __name__ == "__main__":
    main()
