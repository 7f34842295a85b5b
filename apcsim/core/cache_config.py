"""The KV cache manager's release-dependent behaviours, as a typed config node (`cache.*`).

Defaults are vLLM 0.32's; the `vllm=` presets (`apcsim/conf/vllm/`) set a release's values, and
docs/parity.md says which vLLM change each one mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CacheConfig:
    # vLLM V1 reserves one block as its null block (block id 0, a placeholder in block tables):
    # num_gpu_blocks=N leaves N-1 for requests. vLLM 0.6.3 (V0) had none.
    null_block: bool = True
    # vLLM 0.32 frees a block without a hash (a partial tail block) to the FRONT of the free queue,
    # so it is reused before never-used and cached blocks; before, it joined the queue's tail.
    free_keyless_first: bool = True

    def usable_blocks(self, num_gpu_blocks: int) -> int:
        """Blocks requests can hold out of the configured `num_gpu_blocks`."""
        return num_gpu_blocks - 1 if self.null_block else num_gpu_blocks
