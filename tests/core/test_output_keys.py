"""Keys of output blocks: a fixed output stream is keyed to its end at once, with the values the
block-by-block chain gives; a real engine's stream (filled as it samples) is keyed only as far as
it is asked."""

from __future__ import annotations

import numpy as np

from apcsim.core.kv_cache_manager import KVCacheManager, chain_keys
from apcsim.core.request import Request, RequestSpec
from tests.helpers.serving import make_pool

BS = 4


def _request(prompt_len: int = 10, output_len: int = 23) -> Request:
    prompt = np.arange(100, 100 + prompt_len, dtype=np.int32)
    return Request(spec=RequestSpec(request_id="r", prompt_token_ids=prompt, output_len=output_len), index=3,
                   output_seed=7)


def _manager() -> KVCacheManager:
    return KVCacheManager(make_pool("lru", 64, block_size=BS), BS)


def test_fixed_output_stream_is_keyed_to_its_end_with_the_chained_values():
    kv, r = _manager(), _request()
    all_tokens = np.concatenate([r.spec.prompt_token_ids, r.output_tokens()])
    want = chain_keys(all_tokens, BS, kv.hash_algo.root(None), kv.hash_algo)  # (10 + 23) // 4 = 8 blocks
    assert kv.block_keys(r, 2) == want[:2]  # within the prompt: only what is asked
    assert kv.block_keys(r, 3) == want  # block 2 reaches into the output: every output block at once
    assert kv.block_keys(r, 8) is r.block_keys and r.block_keys == want


def test_an_engine_stream_is_keyed_only_as_far_as_asked():
    kv, r = _manager(), _request()
    sampled = np.full(23, -1, dtype=np.int32)  # the engine's array: unsampled slots are -1
    r.set_output_tokens(sampled)
    assert not r.outputs_fixed
    sampled[:2] = [5, 6]  # block 2 (tokens 8..11) is full once two outputs are sampled
    keys = list(kv.block_keys(r, 3))
    assert len(keys) == 3
    sampled[2:6] = [9, 9, 9, 9]  # block 3 fills with what was sampled since
    tokens = np.concatenate([r.spec.prompt_token_ids, sampled[:6]])
    assert kv.block_keys(r, 4) == chain_keys(tokens, BS, kv.hash_algo.root(None), kv.hash_algo)
