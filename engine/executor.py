"""The engine's executor: a StepPlan in, one forward pass of the model, greedy tokens out.

It owns the paged KV cache (`[num_layers, num_blocks, block_size, kv_heads, head_dim]` for K and
for V; layer l's cache is the view [l]) and each request's output-token array: the tokens it
samples are written there, and `Request.set_output_tokens` makes that array the request's token
stream, so the scheduler's block keys for output blocks hash the real generated tokens.

Pure-decode steps go through `engine.decode_graphs` (CUDA graphs on the GPU) once
`enable_decode_graphs` is called; every other step runs the model eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from apcsim.core.plan import ScheduledChunk, StepPlan
from apcsim.core.request import Request
from engine.decode_graphs import DecodeGraphs
from engine.model import AttnMetadata, LlamaForCausalLM

UNSAMPLED = -1  # an output slot whose token has not been sampled yet


@dataclass
class StepInputs:
    """One step's model inputs. Eager steps carry device tensors; a decode step loaded into the
    decode graphs' static buffers carries only `graph_batch` (its number of requests)."""

    input_ids: torch.Tensor | None  # [T] int64
    positions: torch.Tensor | None  # [T] int64
    meta: AttnMetadata | None
    samplers: list[tuple[Request, int]]  # per sampled row: (request, index into its outputs)
    sample_rows: np.ndarray  # int64 [S]: rows of the step's tokens that are sampled
    graph_batch: int = 0  # > 0: run by the decode graphs with this many requests


def kv_block_bytes(model_cfg, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one block across all layers, K and V."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * model_cfg.num_layers * block_size * model_cfg.num_kv_heads * model_cfg.head_dim * elem


class Executor:
    def __init__(self, model: LlamaForCausalLM, ops, *, num_blocks: int, block_size: int,
                 capture_logits: bool = False) -> None:
        cfg = model.cfg
        p = model.lm_head.weight
        self.model, self.ops = model, ops
        self.device, self.dtype = p.device, p.dtype
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.k_caches = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_caches = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.requests: dict[str, Request] = {}
        self.outputs: dict[str, np.ndarray] = {}  # request id -> int32 [output_len]
        self.capture_logits = capture_logits
        self.logits: dict[tuple[str, int], torch.Tensor] = {}  # (request id, output index) -> fp32 [V]
        self.decode_graphs: DecodeGraphs | None = None
        self.host_kv = None  # engine.host_kv.HostKVBuffer when the host tier is on

    def enable_host_tier(self, num_blocks: int):
        """A host KV buffer of `num_blocks` blocks for the scheduler's host tier's copies."""
        from engine.host_kv import HostKVBuffer

        self.host_kv = HostKVBuffer(self.k_caches, self.v_caches, num_blocks)
        return self.host_kv

    def enable_decode_graphs(self, mode: str, *, max_batch: int, max_blocks_per_seq: int,
                             capture_only: list[int] | None = None) -> DecodeGraphs:
        """Run pure-decode steps of up to `max_batch` requests through static buffers: CUDA graphs
        (mode `graph`, captured here: every bucket, or `capture_only`) or the same padded path
        without capture (`padded`)."""
        self.decode_graphs = DecodeGraphs(self.model, self.ops, self.k_caches, self.v_caches, max_batch=max_batch,
                                          max_blocks_per_seq=max_blocks_per_seq, mode=mode, capture_only=capture_only,
                                          keep_logits=self.capture_logits)
        return self.decode_graphs

    def register(self, req: Request) -> None:
        """Give the request a token stream this executor fills (call before it is scheduled).

        A request whose workload fixes its answer (`RequestSpec.output_token_ids`, as multiturn
        does so that the next turn's prompt quotes it) is teacher-forced: the model still samples
        every position (kept in `generated`), but the fixed tokens are what it feeds back and what
        its output blocks hash, so a follow-up prompt finds them cached exactly as in the
        simulator. Free-running requests feed back what they sample."""
        out = np.full(req.max_output_tokens, UNSAMPLED, dtype=np.int32)
        self.requests[req.request_id] = req
        self.outputs[req.request_id] = out
        if req.spec.output_token_ids is None:
            req.set_output_tokens(out)

    def generated(self, request_id: str) -> np.ndarray:
        return self.outputs[request_id]

    # -- inputs --------------------------------------------------------------------------------
    def prepare(self, plan: StepPlan) -> StepInputs | None:
        chunks: list[ScheduledChunk] = list(plan.chunks)
        if plan.num_cohort:
            chunks += plan.cohort_chunks()
        if not chunks:
            return None
        bs = self.block_size
        ids, pos, slots, qsl, seq_lens, tables, sample_rows = [], [], [], [0], [], [], []
        samplers: list[tuple[Request, int]] = []
        t = 0
        for c in chunks:
            r = self.requests[c.request_id]
            start, stop = c.num_context_tokens, c.num_context_tokens + c.num_new_tokens
            toks = r.token_slice(start, stop)
            p = np.arange(start, stop, dtype=np.int64)
            table = np.asarray(c.block_ids, dtype=np.int64)
            ids.append(toks)
            pos.append(p)
            slots.append(table[p // bs] * bs + p % bs)
            t += c.num_new_tokens
            qsl.append(t)
            seq_lens.append(stop)
            tables.append(table)
            if c.samples:
                sample_rows.append(t - 1)
                samplers.append((r, stop - r.prompt_len))
        input_ids = np.concatenate(ids)
        if (input_ids < 0).any():
            raise RuntimeError(f"step {plan.step}: an input token was never sampled")
        max_blocks = max(len(x) for x in tables)
        bt = np.zeros((len(tables), max_blocks), dtype=np.int32)
        for i, x in enumerate(tables):
            bt[i, : len(x)] = x
        rows = np.asarray(sample_rows, dtype=np.int64)
        graphs = self.decode_graphs
        if graphs is not None and t == len(chunks) and graphs.fits(len(chunks), max_blocks):
            # Every request has one new token: a decode step, row i = request i.
            graphs.load(input_ids, np.concatenate(pos), np.concatenate(slots), bt, np.asarray(seq_lens))
            return StepInputs(None, None, None, samplers, rows, graph_batch=len(chunks))
        dev = self.device

        def to(a, dtype):
            return torch.from_numpy(np.ascontiguousarray(a)).to(device=dev, dtype=dtype, non_blocking=True)

        meta = AttnMetadata(
            slot_mapping=to(np.concatenate(slots), torch.int64),
            block_tables=to(bt, torch.int32),
            query_start_loc=to(np.asarray(qsl), torch.int32),
            seq_lens=to(np.asarray(seq_lens), torch.int32),
            logits_indices=to(rows, torch.int64),
            max_query_len=max(c.num_new_tokens for c in chunks),
        )
        return StepInputs(to(input_ids, torch.int64), to(np.concatenate(pos), torch.int64), meta, samplers, rows)

    # -- one step ------------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> None:
        """Run the plan's forward pass and store the sampled tokens; returns after the device is done."""
        if plan.transfers is not None:  # host-tier copies: evicted blocks out and loads in, first
            self.host_kv.run(plan.transfers.copies)
        inp = self.prepare(plan)
        if inp is None:
            return
        self.store(inp, *self.forward(inp))

    @torch.inference_mode()
    def forward(self, inp: StepInputs) -> tuple[np.ndarray, torch.Tensor | None]:
        """The model and greedy sampling: (int32 tokens [S] on the host, fp32 logits [S, V]; from
        the decode graphs, logits only with capture_logits, else None)."""
        if inp.graph_batch:
            tokens, logits = self.decode_graphs.run(inp.graph_batch)  # every row: [n], [n, V] or None
            if len(inp.sample_rows) == inp.graph_batch:
                return tokens, logits
            rows = torch.from_numpy(inp.sample_rows)
            return tokens[inp.sample_rows], None if logits is None else logits[rows.to(logits.device)]
        if not inp.samplers:  # prefill chunks that sample nothing still write their KV
            inp.meta.logits_indices = inp.meta.logits_indices[:0]
        logits = self.model(inp.input_ids, inp.positions, inp.meta, self.k_caches, self.v_caches, self.ops)  # [S, V]
        return logits.argmax(dim=-1).to(torch.int32).cpu().numpy(), logits  # greedy; .cpu() syncs the device

    def store(self, inp: StepInputs, tokens: np.ndarray, logits: torch.Tensor | None) -> None:
        """Write each sampled token into its request's output array (host work after the step)."""
        for (r, idx), tok in zip(inp.samplers, tokens.tolist()):
            out = self.outputs[r.request_id]
            out[idx] = tok
        if self.capture_logits:
            cpu = logits.cpu()
            for i, (r, idx) in enumerate(inp.samplers):
                self.logits[(r.request_id, idx)] = cpu[i].clone()
