"""Chat sessions: each turn's prompt is the previous turn's prompt + its answer + a new message.

A conversation starts with a system prompt shared by every conversation and a first user
message. Turn k+1 arrives `think_time_s` after turn k finishes (a follow-up, released by the
simulator when its parent completes), so later turns find their history in the cache unless it
was evicted in between. The answers are fixed here (`output_token_ids`) so that the next prompt
quotes exactly what the engine "generated".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from apcsim.core.request import RequestSpec
from apcsim.workloads._common import check_float, check_int, distinct_tokens, readonly
from apcsim.workloads.base import BuildContext, WorkloadConfig, register_workload
from apcsim.workloads.priorities import shared_retention


@dataclass
class MultiturnConfig(WorkloadConfig):
    name: str = "multiturn"
    num_conversations: int = 64
    turns: int = 4  # turns per conversation
    system_prompt_tokens: int = 256  # shared by all conversations
    message_tokens: int = 128  # each new user message
    output_tokens: int = 256  # each answer
    think_time_s: float = 5.0  # from an answer to the user's next message
    num_requests: Optional[int] = None  # keep the first N turns in workload order (None: all)


@register_workload("multiturn", MultiturnConfig)
def build(cfg: MultiturnConfig, ctx: BuildContext) -> list[RequestSpec]:
    n_conv = check_int(cfg, "num_conversations", 1)
    turns = check_int(cfg, "turns", 1)
    sys_len = check_int(cfg, "system_prompt_tokens", 0)
    msg = check_int(cfg, "message_tokens", 1)
    out = check_int(cfg, "output_tokens", 1)
    think = check_float(cfg, "think_time_s", 0.0)
    rng, v = ctx.rng, ctx.vocab_size
    system = rng.integers(0, v, sys_len, dtype=np.int32)
    # Distinct first message tokens: conversations diverge right after the system prompt.
    first_tokens = distinct_tokens(rng, n_conv, v)
    keep = shared_retention(cfg, sys_len)  # the system prompt; the history is per conversation
    specs: list[RequestSpec] = []
    # Conversations one after another, turns in order: a parent always precedes its follow-ups,
    # so keeping the first N specs keeps every follow-up's parent.
    for c in range(n_conv):
        history = system
        parent = None
        for k in range(turns):
            message = rng.integers(0, v, msg, dtype=np.int32)
            if k == 0:
                message[0] = first_tokens[c]
            prompt = readonly(np.concatenate([history, message]))
            answer = readonly(rng.integers(0, v, out, dtype=np.int32))
            rid = f"mt-{c}-{k}"
            specs.append(RequestSpec(request_id=rid, prompt_token_ids=prompt, output_len=out,
                                     output_token_ids=answer, parent_id=parent,
                                     think_time_s=think if parent else 0.0, retention_ranges=keep))
            history = np.concatenate([prompt, answer])
            parent = rid
    return specs
