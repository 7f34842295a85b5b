"""The calibrated cost model: step times from profiled kernel timings (see apcsim/calibration).

One step's time, in milliseconds, with L the model's layers:

    tokens(T) + lm_head(S) + L * (sum_prefill_chunks attn_prefill(n, c) + attn_decode(B, C))
    + cpu_step + cpu_per_request * R + hash_per_token * H

- tokens(T): every token-level op (norms, QKV / output / gate+up / down GEMMs, rotary, SiLU,
  residual add) at T = tokens in the step, times L, plus the embedding once;
- lm_head(S): the vocabulary projection of the S tokens sampled this step. The Vidur profile has
  no LM-head timing (Vidur leaves it out); without an `lm_head` row it is derived from the fused
  gate+up GEMM, which has the same inner dimension (hidden size), scaled by the ratio of output
  widths vocab / (2 * intermediate) (128256 / 28672 = 4.47 for Llama-3-8B): a GEMM's bytes and
  FLOPs are both proportional to its output width;
- attention: every chunk of n >= 2 new tokens after c tokens of context is a prefill; every
  request with one new token (the lazy decode cohort and explicit one-token chunks alike) joins
  one decode batch of B requests whose contexts sum to C. So an explicit decode chunk of context c
  costs exactly what a cohort member of context c costs, and a plan of cohort (B, C) costs
  exactly `decode_stretch_times(B, C, 1)[0]`: both go through `_total` with the same operands;
- CPU: per step and per request (R = requests in the step), the sum of affine fits of the
  profile's `cpu_*` ops by batch size. For a100/llama3_8b they are Vidur's vLLM engine overheads
  (schedule, sampler, prepare inputs, process outputs), measured for CodeLlama-34B at TP2 on
  A100 at batch 8..128 (vLLM of spring 2024); the figures are engine-dependent, not GPU-bound,
  and the sampler's part was measured with a 32k vocabulary. `cpu_overhead=False` drops them;
- hashing: H = prompt tokens hashed and looked up this step (`StepPlan.num_hashed_tokens`, 0
  without prefix caching), at `hash_ns_per_token`: from a `cpu_hash` profile row if there is one,
  else DEFAULT_HASH_NS_PER_TOKEN, measured with `python -m apcsim.calibration.hashcost` (vLLM V1's
  tuple hashing with Python's built-in hash plus a dict lookup, block size 16) on the development
  machine (AMD EPYC VM, 2 vCPUs, Python 3.11.7): 113-115 ns per token.

A pure-decode step (every request has one new token) costs instead

    decode_step(B, C) + cpu_step + cpu_per_request * R

when the profile has `decode_step` rows: our engine replays decode steps from CUDA graphs, whose
kernels run back to back with no launch gaps, so the per-op sum above (each op timed in a stream
of launches) would overstate them; its profiler then times the whole replayed step by (batch,
context) instead, fitted like decode attention. A batch of B is costed as its graph bucket
(`apcsim.calibration.decode_buckets`: 1, 2, 4, then multiples of 8), the batch the engine pads it to and
runs; its padding rows add no context. A batch above the engine's largest graph bucket
(`decode_graph_max_batch`, the engine's `cuda_graph_max_batch`; None: every batch has a bucket)
runs eagerly there, so it is costed per op like any other step.

Not modelled, because the data has no timing for them: writing the new K/V into the paged cache
(a `kv_cache_save` row is used when a profile has one) and TP communication (one GPU).
"""

from __future__ import annotations

import os
from dataclasses import astuple

import numpy as np

from apcsim.calibration.attention import DecodeAttention, PrefillAttention
from apcsim.calibration.decode_buckets import bucket_of
from apcsim.calibration.fit import Curve, affine_fit
from apcsim.calibration.fit_cache import cached_fit
from apcsim.calibration.match import check_identity, find_profile, load_matching_profile
from apcsim.calibration.profile import OPS, Profile, read_profile
from apcsim.core.plan import StepPlan
from apcsim.errors import ConfigError
from apcsim.hardware import HardwareConfig, ModelConfig, check_tp, per_gpu_model
from apcsim.sim.cost_model import CostModel, RooflineCostModel

# The values of the `cost_model` config key (see `make_cost_model`).
COST_MODELS = ("calibrated", "roofline")

DEFAULT_HASH_NS_PER_TOKEN = 115.0
# Stretches up to this many steps are costed in plain Python: NumPy's per-call overhead (a dozen
# calls of a microsecond or more) outweighs a few scalar lookups; most stretches are short (a
# median of 6 steps on the Azure conversation trace, cut by the next arrival).
SHORT_STRETCH = 48
REQUIRED_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj", "attn_prefill", "attn_decode")
# Vidur's cpu_* ops are the parts of one step; `cpu_step` (our engine's profiler) is their total.
VIDUR_CPU_OPS = ("cpu_schedule", "cpu_sampler", "cpu_prepare_inputs", "cpu_process_outputs")


class CalibratedCostModel:
    # Prices the cohort by its size and total context (apcsim.sim.cost_model.CostModel).
    reads_cohort_tables = False

    def __init__(self, profile: Profile, model: ModelConfig, *, cpu_overhead: bool = True,
                 hash_ns_per_token: float | None = None, use_decode_step: bool = True,
                 decode_graph_max_batch: int | None = None) -> None:
        ops = profile.ops
        missing = [op for op in REQUIRED_OPS if op not in ops]
        if missing:
            raise ValueError(f"profile {profile.path} lacks {', '.join(missing)}")
        self.name = f"calibrated({profile.hardware}, {profile.model})"
        self.profile_path = profile.path
        self.num_layers = float(model.num_layers)

        terms = []
        for op, spec in OPS.items():
            if spec.kind == "token" and op != "lm_head" and op in ops:
                terms.append((self.num_layers if spec.scope == "layer" else 1.0, Curve.fit(ops[op].num_tokens, ops[op].time_ms)))
        self.tokens = Curve.total(terms)
        if "lm_head" in ops:
            self.lm_head = Curve.fit(ops["lm_head"].num_tokens, ops["lm_head"].time_ms)
        else:
            up = Curve.fit(ops["mlp_up_proj"].num_tokens, ops["mlp_up_proj"].time_ms)
            k = model.vocab_size / (2.0 * model.intermediate_size)
            self.lm_head = Curve(up.xs, up.ys * k, up.slope * k)

        pre, dec = ops["attn_prefill"], ops["attn_decode"]
        for d, op in ((pre, "attn_prefill"), (dec, "attn_decode")):
            if d.head_dim != model.head_dim:
                raise ValueError(f"profile {profile.path}: {op} head_dim {d.head_dim} != model's {model.head_dim}")
        self.prefill = PrefillAttention.fit(pre.num_tokens, pre.context_len, pre.time_ms, scale=model.num_heads / pre.num_heads)
        self.decode = DecodeAttention.fit(dec.batch_size, dec.context_len, dec.time_ms, kv_ratio=model.num_kv_heads / dec.num_kv_heads)
        # Whole pure-decode steps, when the profile times them as the engine runs them.
        self.decode_step: DecodeAttention | None = None
        if use_decode_step and "decode_step" in ops:
            st = ops["decode_step"]
            if (st.num_heads, st.num_kv_heads, st.head_dim) != (model.num_heads, model.num_kv_heads, model.head_dim):
                raise ValueError(f"profile {profile.path}: decode_step was measured with other heads than the model's "
                                 "(a whole step cannot be rescaled)")
            self.decode_step = DecodeAttention.fit(st.batch_size, st.context_len, st.time_ms)
        if decode_graph_max_batch is not None and decode_graph_max_batch < 1:
            raise ValueError(f"decode_graph_max_batch must be >= 1, got {decode_graph_max_batch}")
        # The largest batch the engine replays from a graph (it captures up to the bucket of its
        # max batch); larger decode batches run eagerly and are costed per op.
        self.graph_max_batch = None if decode_graph_max_batch is None else bucket_of(decode_graph_max_batch)

        cpu_ops = ("cpu_step",) if "cpu_step" in ops else tuple(op for op in VIDUR_CPU_OPS if op in ops)
        fits = [affine_fit(ops[op].batch_size, ops[op].time_ms) for op in cpu_ops] if cpu_overhead else []
        self.cpu_step_ms = float(sum(a for a, _ in fits))
        self.cpu_request_ms = float(sum(b for _, b in fits))
        if hash_ns_per_token is None:
            if "cpu_hash" in ops:
                h = ops["cpu_hash"]
                hash_ns_per_token = 1e6 * float((h.num_tokens * h.time_ms).sum() / (h.num_tokens ** 2).sum())
            else:
                hash_ns_per_token = DEFAULT_HASH_NS_PER_TOKEN
        self.hash_ms_per_token = hash_ns_per_token * 1e-6
        # Marginal costs in a busy batch, for recompute_time.
        self._token_slope = self.tokens.slope
        self._causal_pp, self._context_pp = self.prefill.per_pair_ms()

    # -- the one formula ------------------------------------------------------------------------
    def _total(self, tokens_ms, lm_ms, prefill_ms, decode_ms, cpu_ms, hash_ms):
        """Seconds. Works on scalars and on numpy arrays with the same operations in the same order."""
        return (tokens_ms + lm_ms + self.num_layers * (prefill_ms + decode_ms) + cpu_ms + hash_ms) * 1e-3

    def _lm(self, samples: int) -> float:
        return self.lm_head(samples) if samples > 0 else 0.0

    def _cpu(self, requests: int) -> float:
        return self.cpu_step_ms + self.cpu_request_ms * requests

    def _decode_total(self, step_ms, cpu_ms, hash_ms):
        """Seconds of a pure-decode step costed whole (`decode_step`); scalars or arrays alike."""
        return (step_ms + cpu_ms + hash_ms) * 1e-3

    def _decodes_whole(self, batch: int) -> bool:
        """Whether a pure-decode step of `batch` requests is costed as one replayed graph."""
        return self.decode_step is not None and (self.graph_max_batch is None or batch <= self.graph_max_batch)

    def step_time(self, plan: StepPlan) -> float:
        n_dec = plan.num_cohort
        c_dec = plan.cohort_context_sum
        tokens = n_dec
        samples = n_dec
        prefill = 0.0
        for c in plan.chunks:
            n = c.num_new_tokens
            tokens += n
            if c.samples:
                samples += 1
            if n == 1:
                n_dec += 1
                c_dec += c.num_context_tokens
            else:
                prefill += self.prefill(n, c.num_context_tokens)
        if tokens == 0:
            return 0.0
        cpu = self._cpu(len(plan.chunks) + plan.num_cohort)
        hashing = self.hash_ms_per_token * plan.num_hashed_tokens
        if tokens == n_dec and self._decodes_whole(n_dec):  # every request decodes one token
            return float(self._decode_total(self.decode_step(bucket_of(n_dec), c_dec), cpu, hashing))
        return float(self._total(self.tokens(tokens), self._lm(samples), prefill, self.decode(n_dec, c_dec),
                                 cpu, hashing))

    def decode_stretch_times(self, num_seqs: int, context_sum: int, num_steps: int) -> np.ndarray:
        if num_steps <= SHORT_STRETCH:
            return np.array(self._short_stretch_times(num_seqs, context_sum, num_steps), dtype=np.float64)
        ctx = context_sum + num_seqs * np.arange(num_steps, dtype=np.float64)  # [num_steps], exact integers
        if self._decodes_whole(num_seqs):
            return self._decode_total(self.decode_step.eval(bucket_of(num_seqs), ctx), self._cpu(num_seqs),
                                      self.hash_ms_per_token * 0)
        dec = self.decode.eval(num_seqs, ctx)
        return self._total(self.tokens(num_seqs), self._lm(num_seqs), 0.0, dec, self._cpu(num_seqs),
                           self.hash_ms_per_token * 0)

    def decode_stretch_list(self, num_seqs: int, context_sum: int, num_steps: int) -> list[float]:
        """`decode_stretch_times(...).tolist()`, with no array made for a short stretch."""
        if num_steps <= SHORT_STRETCH:
            return self._short_stretch_times(num_seqs, context_sum, num_steps)
        return self.decode_stretch_times(num_seqs, context_sum, num_steps).tolist()

    def _short_stretch_times(self, num_seqs: int, context_sum: int, num_steps: int) -> list[float]:
        """`decode_stretch_times` in plain Python: the same formula on the same operands, element
        by element, so the same bits (the contexts are exact integers in either)."""
        ctx = range(context_sum, context_sum + num_seqs * num_steps, num_seqs)
        cpu, hashing = self._cpu(num_seqs), self.hash_ms_per_token * 0
        if self._decodes_whole(num_seqs):
            total = self._decode_total
            return [total(s, cpu, hashing) for s in self.decode_step.along(bucket_of(num_seqs), ctx)]
        total, tokens, lm = self._total, self.tokens(num_seqs), self._lm(num_seqs)
        return [total(tokens, lm, 0.0, d, cpu, hashing) for d in self.decode.along(num_seqs, ctx)]

    def recompute_time(self, num_tokens: int, context: int) -> float:
        """Marginal cost inside a large batch: the token-level ops at their large-batch slope, and
        attention at its per-pair cost at the largest profiled chunk (no fixed costs: the step
        runs anyway)."""
        pairs_causal = num_tokens * (num_tokens + 1) / 2.0
        pairs_context = float(num_tokens) * context
        attn = self.num_layers * (self._causal_pp * pairs_causal + self._context_pp * pairs_context)
        return (num_tokens * self._token_slope + attn) * 1e-3


# (path, mtime_ns, model fields, cpu_overhead) -> fitted model; a handful of entries (sweeps
# build one per run, nearly always of the same profile).
_FITTED: dict[tuple, CalibratedCostModel] = {}
_FITTED_MAX = 8


def load_calibrated(path, model: ModelConfig, *, cpu_overhead: bool = True,
                    profile: Profile | None = None) -> CalibratedCostModel:
    """A fitted model for the profile at `path`, memoised (fitting takes a fraction of a second,
    and sweeps build one per run). The model is stateless after construction, so sharing is safe.
    `profile`: the same file already read (`load_matching_profile` reads it to check it), so a
    first call does not parse the CSV twice."""
    p = os.fspath(path)
    key = (p, os.stat(p).st_mtime_ns, astuple(model), cpu_overhead)
    fitted = _FITTED.get(key)
    if fitted is None:
        prof = profile if profile is not None and profile.path == p else read_profile(p)
        fitted = CalibratedCostModel(prof, ModelConfig(*key[2]), cpu_overhead=cpu_overhead)
        if len(_FITTED) >= _FITTED_MAX:
            del _FITTED[next(iter(_FITTED))]
        _FITTED[key] = fitted
    return fitted


def make_cost_model(name: str, hw: HardwareConfig, model: ModelConfig, *, tp: int = 1,
                    profile: str | None = None) -> CostModel:
    """The cost model named by the `cost_model` config key, for one replica of `tp` GPUs;
    `profile`: a calibration profile CSV instead of the bundled one of (hardware, model, tp).
    A bad name, a missing, malformed or mismatched profile is a ConfigError with a one-line message."""
    if name == "roofline":
        if profile is not None:
            raise ConfigError("profile= is for cost_model=calibrated; cost_model=roofline needs no profile")
        return RooflineCostModel(hw, model, tp)
    if name != "calibrated":
        raise ConfigError(f"cost_model must be one of {', '.join(COST_MODELS)}, got {name!r}")
    check_tp(hw, model, tp)
    if tp == 1:
        return _cached_calibrated(hw, model, profile)
    prof = load_matching_profile(hw, model, tp, profile)
    try:
        return TensorParallelComm(CalibratedCostModel(prof, per_gpu_model(model, tp)), hw, model, tp)
    except ValueError as e:
        raise ConfigError(f"calibration profile {prof.path}: {e}") from None


def _cached_calibrated(hw: HardwareConfig, model: ModelConfig, profile: str | None) -> CalibratedCostModel:
    """The tp=1 calibrated model from the on-disk fit cache (apcsim.calibration.fit_cache), or
    read, checked and fitted (then cached); checked against the run either way."""
    path = find_profile(hw, model, 1, profile)

    def fit_profile():
        prof = load_matching_profile(hw, model, 1, profile)
        try:
            return (prof.hardware, prof.model, prof.tp), load_calibrated(prof.path, model, profile=prof)
        except ValueError as e:
            raise ConfigError(f"calibration profile {prof.path}: {e}") from None

    identity, fitted = cached_fit(path, model, fit_profile)
    check_identity(path, identity, hw, model, 1)
    return fitted


class TensorParallelComm:
    """A per-GPU cost model (a profile measured at `tp`, which times no communication) plus the
    two all-reduces per layer of tensor parallelism, costed from the hardware's interconnect as in
    the roofline model."""

    def __init__(self, per_gpu: CostModel, hw: HardwareConfig, model: ModelConfig, tp: int) -> None:
        self.inner = per_gpu
        self.name = f"{per_gpu.name[:-1]}, tp={tp})"
        layers = model.num_layers
        ring = 2.0 * (tp - 1) / tp * model.hidden_size * model.dtype_bytes / (hw.interconnect_bw_gbps * 1e9)
        self.per_token = 2 * layers * ring
        self.per_step = 2 * layers * hw.interconnect_latency_us * 1e-6

    def step_time(self, plan: StepPlan) -> float:
        tokens = plan.num_cohort + sum(c.num_new_tokens for c in plan.chunks)
        t = self.inner.step_time(plan)
        return t if tokens == 0 else t + self.per_step + tokens * self.per_token

    def decode_stretch_times(self, num_seqs: int, context_sum: int, num_steps: int) -> np.ndarray:
        return self.inner.decode_stretch_times(num_seqs, context_sum, num_steps) + (self.per_step + num_seqs * self.per_token)

    def recompute_time(self, num_tokens: int, context: int) -> float:
        return self.inner.recompute_time(num_tokens, context) + num_tokens * self.per_token
