"""The parity matrix: configs chosen so that every decision the core makes is exercised against
vLLM (hits, evictions, preemptions and resumes, same-step finishes, the full-sequence admission
gate, budgets, chunking, priorities, tenants, block sizes). Each is a list of the overrides
`python -m apcsim` takes; all run under the default `vllm=v0_32` preset unless they say so.
Small on purpose: the whole matrix replays in about a minute on 2 CPUs.
"""

from __future__ import annotations

_SP = ["workload=shared_prefix", "workload.input_tokens=256", "workload.output_tokens=32"]
_MT = ["workload=multiturn", "workload.num_conversations=12", "workload.turns=3", "workload.system_prompt_tokens=96",
       "workload.message_tokens=40", "workload.output_tokens=24", "workload.think_time_s=0.5"]
_CLASSES = ("workload.priority_classes=[{name:interactive,share:0.3,priority:0},{name:standard,share:0.4,priority:1},"
            "{name:batch,share:0.3,priority:5}]")
_MOONCAKE = ["workload=mooncake", "workload.num_requests=200", "workload.length_scale=0.0625"]

SCENARIOS: dict[str, list[str]] = {
    # The seed article's example: one system prompt, three questions, one at a time.
    "seed_example_bs8": ["workload=system_prompt", "max_concurrency=1", "+policy=lru", "block_size=8"],
    "seed_example_bs16": ["workload=system_prompt", "max_concurrency=1", "+policy=lru", "block_size=16"],
    # One request at a time with a chunk cap: vLLM 0.32 lifts the cap for a lone request.
    "seed_example_long_prefill_solo": ["workload=system_prompt", "max_concurrency=1", "+policy=lru", "block_size=16",
                                       "scheduler.long_prefill_token_threshold=128"],
    "shared_prefix_no_eviction": [*_SP, "workload.num_requests=32", "+policy=lru", "num_gpu_blocks=2000"],
    "shared_prefix_eviction": [*_SP, "workload.num_requests=40", "+policy=lru", "num_gpu_blocks=60",
                               "scheduler.max_num_seqs=8"],
    "shared_prefix_preemption": [*_SP, "workload.num_requests=48", "workload.output_tokens=96", "+policy=lru",
                                 "num_gpu_blocks=40", "scheduler.max_num_seqs=16"],
    "shared_prefix_poisson": [*_SP, "workload.num_requests=60", "workload.request_rate=200", "+policy=lru",
                              "num_gpu_blocks=80", "max_concurrency=12"],
    "shared_prefix_caching_off": [*_SP, "workload.num_requests=32", "num_gpu_blocks=60", "scheduler.max_num_seqs=8"],
    "multiturn_small_cache": [*_MT, "+policy=lru", "num_gpu_blocks=48", "block_size=16"],
    "multiturn_tenants_bs32": [*_MT, "workload.num_tenants=3", "+policy=lru", "num_gpu_blocks=30", "block_size=32"],
    # The case: 200 Mooncake requests scaled to 32-token hash blocks, 250 blocks.
    "mooncake_bs32": [*_MOONCAKE, "+policy=lru", "num_gpu_blocks=250", "block_size=32"],
    # Arrivals 100x faster: a full cache, evictions on every admission, a preemption.
    "mooncake_bs16_preemption": [*_MOONCAKE, "workload.time_scale=0.01", "+policy=lru", "num_gpu_blocks=330",
                                 "block_size=16"],
    "mooncake_bs32_preemption": [*_MOONCAKE, "workload.time_scale=0.02", "+policy=lru", "num_gpu_blocks=180",
                                 "block_size=32"],
    "mooncake_bs64": [*_MOONCAKE, "workload.time_scale=0.02", "+policy=lru", "num_gpu_blocks=90", "block_size=64"],
    "rag": ["workload=rag", "workload.num_requests=60", "workload.num_documents=40", "workload.chunk_tokens=64",
            "workload.chunks_per_request=3", "workload.output_tokens=16", "+policy=lru", "num_gpu_blocks=120"],
    "priority_scheduler": [*_SP, "workload.num_requests=40", "workload.request_rate=300", "scheduler=priority",
                           "+policy=lru", "num_gpu_blocks=50", "scheduler.max_num_seqs=12"],
    # Mixed priorities: vLLM's priority queue, and its preemption of the lowest priority.
    "priority_classes_preemption": [*_SP, "workload.num_requests=60", "workload.output_tokens=64",
                                    "workload.request_rate=400", _CLASSES, "scheduler=priority", "+policy=lru",
                                    "num_gpu_blocks=45", "scheduler.max_num_seqs=16"],
    "priority_classes_multiturn": [*_MT, _CLASSES, "workload.request_rate=40", "scheduler=priority", "+policy=lru",
                                   "num_gpu_blocks=40", "block_size=16"],
    "small_max_num_seqs": [*_SP, "workload.num_requests=24", "+policy=lru", "num_gpu_blocks=300",
                           "scheduler.max_num_seqs=2"],
    "small_token_budget": [*_SP, "workload.num_requests=24", "+policy=lru", "num_gpu_blocks=100",
                           "scheduler.max_num_batched_tokens=96", "scheduler.max_num_seqs=8"],
    "long_prefill_threshold": [*_SP, "workload.num_requests=24", "+policy=lru", "num_gpu_blocks=100",
                               "scheduler.long_prefill_token_threshold=64", "scheduler.max_num_seqs=8"],
    "no_chunked_prefill": [*_SP, "workload.num_requests=32", "+policy=lru", "num_gpu_blocks=70",
                           "scheduler.chunked_prefill=false", "scheduler.max_num_batched_tokens=512",
                           "scheduler.max_num_seqs=8"],
    "azure_code_bs32": ["workload=azure", "workload.path=azure_llm_2023/AzureLLMInferenceTrace_code.csv",
                        "workload.num_requests=40", "+policy=lru", "num_gpu_blocks=400", "block_size=32",
                        "scheduler.max_num_seqs=16"],
}
