"""The KV block pool: blocks, ref counts, the key -> block map and the evictable set.

Every block is in exactly one of three places: never used (handed out first, lowest id first),
in use (ref_cnt > 0), or evictable (ref_cnt == 0, ordered by the eviction policy). A block with a
key is findable in `cached` under that key; two blocks may hold the same key when two requests
computed the same prefix at once (vLLM keeps both; lookups take the first).
"""

from __future__ import annotations

from policies.eviction.base import EvictionPolicy
from policies.types import Block


class BlockPool:
    def __init__(self, num_blocks: int, policy: EvictionPolicy) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.policy = policy
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._never_used = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives the lowest id
        self.cached: dict[int, dict[int, Block]] = {}  # key -> {block_id: block}
        self.children_of: dict[int, int] = {}  # key -> cached blocks whose parent_key it is
        self.num_evictions = 0

    @property
    def num_free(self) -> int:
        """Blocks that an allocation can take now: never used plus evictable."""
        return len(self._never_used) + len(self.policy)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def lookup(self, key: int) -> Block | None:
        hit = self.cached.get(key)
        return None if hit is None else next(iter(hit.values()))

    def touch(self, blocks: list[Block]) -> None:
        """A request takes cached blocks it hit: ref counts up, evictable ones leave the set."""
        policy = self.policy
        for b in blocks:
            if b.ref_cnt == 0:
                policy.on_acquire(b)
            b.ref_cnt += 1
            policy.on_hit(b)

    def allocate(self, n: int) -> list[Block]:
        """`n` blocks with ref_cnt 1 and no key: never-used ones first, then the policy's victims."""
        if n > self.num_free:
            raise RuntimeError(f"allocate({n}) with only {self.num_free} free blocks")
        out = []
        never_used, blocks, policy = self._never_used, self.blocks, self.policy
        for _ in range(n):
            if never_used:
                b = blocks[never_used.pop()]
            else:
                b = policy.victim()
                self._evict(b)
            b.ref_cnt = 1
            out.append(b)
        return out

    def _evict(self, b: Block) -> None:
        self.policy.on_evict(b)
        if b.key is None:
            return
        same_key = self.cached[b.key]
        del same_key[b.block_id]
        if not same_key:
            del self.cached[b.key]
        pk = b.parent_key
        if pk is not None:
            left = self.children_of[pk] - 1
            if left:
                self.children_of[pk] = left
            else:
                del self.children_of[pk]
            for parent in self.cached.get(pk, {}).values():
                parent.num_children = left
                if left == 0 and parent.ref_cnt == 0:
                    self.policy.on_became_leaf(parent)
        b.key = b.parent_key = None
        b.depth = -1
        b.num_children = 0
        self.num_evictions += 1

    def cache(self, b: Block, key: int, depth: int, parent_key: int | None) -> None:
        """Give an in-use block its key: its KV is now reusable by any request with this prefix."""
        b.key = key
        b.depth = depth
        b.parent_key = parent_key
        b.num_children = self.children_of.get(key, 0)  # children may outlive an evicted twin
        if parent_key is not None:
            n = self.children_of.get(parent_key, 0) + 1
            self.children_of[parent_key] = n
            for parent in self.cached.get(parent_key, {}).values():
                parent.num_children = n
        self.cached.setdefault(key, {})[b.block_id] = b
        self.policy.on_insert(b)

    def release(self, blocks) -> None:
        """Drop one reference to each block, in the given order (the order they become evictable)."""
        policy = self.policy
        for b in blocks:
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                policy.on_release(b)

    def verify(self) -> None:
        """Check every invariant of the pool; raises AssertionError naming the broken one."""
        never = set(self._never_used)
        assert len(never) == len(self._never_used), "a block is twice in the never-used stack"
        children: dict[int, int] = {}
        for b in self.blocks:
            where = [b.block_id in never, b.ref_cnt > 0, b in self.policy]
            assert b.ref_cnt >= 0, f"{b!r}: negative ref count"
            assert sum(where) == 1, f"{b!r}: in never-used/in-use/evictable = {where}"
            if b.key is None:
                assert b.parent_key is None and b.num_children == 0 and b.depth == -1, f"keyless {b!r} has chain state"
                continue
            assert self.cached.get(b.key, {}).get(b.block_id) is b, f"{b!r} missing from the key map"
            assert b.depth >= 0 and (b.parent_key is None) == (b.depth == 0), f"{b!r}: depth and parent disagree"
            if b.parent_key is not None:
                children[b.parent_key] = children.get(b.parent_key, 0) + 1
        assert children == self.children_of, "children_of disagrees with the cached blocks' parent keys"
        for key, same in self.cached.items():
            assert same, f"empty entry for key {key}"
            for bid, b in same.items():
                assert b.block_id == bid and b.key == key, f"key map entry {key}/{bid} points to {b!r}"
                assert b.num_children == children.get(key, 0), f"{b!r}: num_children {b.num_children} != {children.get(key, 0)}"
        self.policy.verify()
