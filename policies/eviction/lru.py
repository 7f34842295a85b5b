"""LRU in vLLM V1's exact order.

vLLM keeps one free queue: a request's blocks are appended when freed, in reverse order (its
chain's tail first), and allocation pops from the head. So among blocks released together the
tail is reused before the head, and a hit takes a block out of the queue.

The queue is a list in release order, consumed from a head index, so a release is one `extend`
(no per-block write at all) and taking the n oldest is one slice. A hit cannot cut an entry out
of the middle of a list cheaply, and finding it would need a per-block position written at every
release, so a hit only counts the block in `_dead` instead: its entry stays and is skipped when
the head reaches it. Invariant: a block's entries at or after the head are first its dead ones
(`_dead[block]` of them), then at most one live one, since a hit always kills the block's
latest entry and a release appends a new one after every older one. So the first entry of a block
with a dead count is always dead. `_n` counts the live entries.

A `BlockRun` (a parked range, apcsim.core.pending_keys) is one list entry for all its blocks,
named by id, which leave it from `run.next` on as the head passes: entering and leaving the
queue costs one entry, not one per block, and `evict_ids` hands them out by id without touching
a block. Until the pool keys it nobody can hit its blocks; once keyed (`key_run`), a hit on one
of them marks it removed in its run (`_in_run` says which run), and the run skips it. `_runs`
lists the run entries at or after the head, in queue order, each at list index `run.pos -
_base` (positions only shift when the consumed prefix is cut off, which moves `_base`, or at a
compaction, which sets them anew).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from operator import attrgetter

from policies.eviction.base import EvictionConfig, EvictionPolicy
from policies.registry import register_eviction
from policies.types import Block, BlockRun

_COMPACT_AT = 4096  # drop the consumed prefix (or the dead entries) once this many and half the list
_block_id = attrgetter("block_id")


@dataclass
class LRUConfig(EvictionConfig):
    name: str = "lru"


@register_eviction("lru", LRUConfig)
class LRUPolicy(EvictionPolicy):
    uses_tree = False
    uses_depth = False
    plain_free_queue = True

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._q: list[Block | BlockRun] = []  # release order; entries before _head are gone
        self._head = 0  # index in _q of the oldest entry not yet consumed
        self._dead: dict[Block, int] = {}  # block -> entries of it at or after the head killed by hits
        self._ndead = 0  # sum of _dead's counts
        self._n = 0  # live blocks (a run counts its live members)
        self._removed = 0  # live blocks ever removed (evicted or killed)
        self._compactions = 0
        self._members: tuple | None = None  # (_version(), ids of live blocks), for __contains__
        self._runs: deque[BlockRun] = deque()  # run entries at or after the head, in queue order
        self._base = 0  # a run's list index is run.pos - _base
        self._in_run: dict[Block, BlockRun] = {}  # live members of keyed runs -> their run

    def on_release(self, block: Block) -> None:
        self._q.append(block)
        self._n += 1

    def on_release_many(self, blocks: list[Block]) -> None:
        self._q.extend(blocks)
        self._n += len(blocks)

    def on_release_run(self, run: BlockRun) -> None:
        """The run's blocks enter the queue together, in its order, as one entry."""
        run.pos = len(self._q) + self._base
        self._q.append(run)
        self._runs.append(run)
        self._n += len(run.ids) - run.next

    def key_run(self, run: BlockRun) -> None:
        """The pool keyed the run's queued blocks: from now on a hit may take any of them."""
        run.keyed = True
        self._in_run.update(dict.fromkeys(run.queued(), run))

    def _kill(self, block: Block) -> None:
        """The block's live entry (its latest) leaves the queue where it stands."""
        self._dead[block] = self._dead.get(block, 0) + 1
        self._ndead += 1
        self._n -= 1
        self._removed += 1
        if self._ndead >= _COMPACT_AT and self._ndead >= self._n:
            self._compact()  # hits without evictions: dead entries would pile up

    def on_acquire(self, block: Block) -> None:
        if self._in_run:
            run = self._in_run.pop(block, None)
            if run is not None:  # a keyed run's member: its run skips it when it gets there
                run.removed.add(block.block_id)
                self._n -= 1
                self._removed += 1
                return
        self._kill(block)

    def _compact(self) -> None:
        """Rebuild the list from the live entries alone."""
        q = []
        for x in self._live_entries():
            if x.__class__ is BlockRun:
                x.pos = len(q)
            q.append(x)
        self._q = q
        self._head = self._base = 0
        self._dead = {}
        self._ndead = 0
        self._runs = deque(x for x in q if x.__class__ is BlockRun)
        self._compactions += 1

    def _live(self) -> list[Block]:
        """The live blocks from the head on, in order."""
        live = []
        for x in self._live_entries():
            if x.__class__ is BlockRun:
                live += [b for b in x.queued() if b.block_id not in x.removed]
            else:
                live.append(x)
        return live

    def _live_entries(self):
        """The entries from the head on that hold a live block, in order: each block's dead
        entries skipped, and runs with nothing queued but removed members."""
        dead = dict(self._dead)
        for x in self._q[self._head :]:
            if x.__class__ is BlockRun:
                if _skip_removed(x):
                    yield x
                continue
            k = dead.get(x)
            if k:
                dead[x] = k - 1
            else:
                yield x

    def _skip_dead(self) -> int:
        """Advance the head past dead entries and spent runs; returns it. At the head is then a
        live block, or a run whose `ids[next]` is live (or the end of the list)."""
        dead, q, i = self._dead, self._q, self._head
        while i < len(q):
            x = q[i]
            if x.__class__ is BlockRun:
                if _skip_removed(x):
                    break
                self._runs.popleft()
            else:
                k = dead.get(x)
                if not k:
                    break
                self._pass_dead(x, k)
            i += 1
        self._head = i
        return i

    def _pass_dead(self, block: Block, k: int) -> None:
        """The head passes one of the block's k dead entries."""
        if k == 1:
            del self._dead[block]
        else:
            self._dead[block] = k - 1
        self._ndead -= 1

    def victim(self) -> Block:
        if not self._n:
            raise IndexError("victim() of an empty LRU queue")
        x = self._q[self._skip_dead()]
        return x.of[x.ids[x.next]] if x.__class__ is BlockRun else x

    def on_evict(self, block: Block) -> None:
        i = self._skip_dead()
        x = self._q[i] if i < len(self._q) else None
        if x is block:
            self._head = i + 1
        elif x.__class__ is BlockRun and x.of[x.ids[x.next]] is block:
            x.next += 1
            if x.keyed:
                del self._in_run[block]
            if x.next == len(x.ids):
                self._runs.popleft()
                self._head = i + 1
        else:  # not the head (the contract evicts victim(), but stay exact if not)
            self.on_acquire(block)
            return
        self._n -= 1
        self._removed += 1

    def evict(self, n: int) -> list[Block]:
        if n > self._n:
            raise IndexError(f"evict({n}) from an LRU queue of {self._n}")
        if self._runs:
            of = self._runs[0].of  # the pool's blocks by id (every run names its blocks in it)
            return list(map(of.__getitem__, self._take(n, [])))
        q, dead = self._q, self._dead
        i = self._head
        out = q[i : i + n]
        if dead and not dead.keys().isdisjoint(out):  # dead entries among the next n: walk them
            out = []
            while len(out) < n:
                b = q[i]
                k = dead.get(b)
                if not k:
                    out.append(b)
                else:
                    self._pass_dead(b, k)
                i += 1
        else:
            i += n
        self._consumed(n, i)
        return out  # oldest first

    def evict_ids(self, n: int) -> tuple[list[int], list[Block]]:
        """`evict(n)` as block ids, and the victims that entered the queue on their own or in a
        keyed run, in the same order: the others left runs not keyed, whose blocks the pool keeps
        no per-block state for, so they are handed out by id and not touched at all."""
        if n > self._n:
            raise IndexError(f"evict({n}) from an LRU queue of {self._n}")
        runs = self._runs
        if not runs:
            out = self.evict(n)
            return list(map(_block_id, out)), out
        run = runs[0]
        j = run.next
        if run.pos - self._base == self._head and not run.keyed and j + n < len(run.ids):
            # The hot case (a decode boundary's few blocks): all from the run at the head, which
            # stays there.
            run.next = j + n
            self._n -= n
            self._removed += n
            return run.ids[j : j + n], []
        plain: list[Block] = []
        return self._take(n, plain), plain

    def _take(self, n: int, plain: list[Block]) -> list[int]:
        """The ids of the n oldest live blocks, walking entries: slices of plain entries up to
        the next run, then ids out of the run. Plain entries and keyed runs' members also go to
        `plain`."""
        q, dead, runs = self._q, self._dead, self._runs
        i = self._head
        out: list[int] = []
        need = n
        while need:
            stop = runs[0].pos - self._base if runs else len(q)
            if i < stop:  # plain entries q[i:stop]
                seg = q[i : i + min(need, stop - i)]
                if dead and not dead.keys().isdisjoint(seg):
                    while need and i < stop:
                        b = q[i]
                        i += 1
                        k = dead.get(b)
                        if not k:
                            out.append(b.block_id)
                            plain.append(b)
                            need -= 1
                            continue
                        self._pass_dead(b, k)
                else:
                    out += map(_block_id, seg)
                    plain += seg
                    need -= len(seg)
                    i += len(seg)
                continue
            run = runs[0]
            need -= self._run_take(run, need, out, plain)
            if run.next == len(run.ids):
                runs.popleft()
                i += 1
        self._consumed(n, i)
        return out

    def _run_take(self, run: BlockRun, need: int, out: list[int], plain: list[Block]) -> int:
        """Up to `need` live ids out of the run, oldest first; returns how many."""
        ids, j = run.ids, run.next
        if not run.keyed:
            take = ids[j : j + need]
            out += take
            run.next = j + len(take)
            return len(take)
        removed, in_run, of = run.removed, self._in_run, run.of
        got, end = 0, len(ids)
        while got < need and j < end:
            i = ids[j]
            j += 1
            if i in removed:
                removed.discard(i)
                continue
            b = of[i]
            del in_run[b]
            out.append(i)
            plain.append(b)
            got += 1
        run.next = j
        return got

    def _consumed(self, n: int, i: int) -> None:
        """n live blocks left from the head, which is now at list index i."""
        self._n -= n
        self._removed += n
        q = self._q
        if i >= _COMPACT_AT and 2 * i >= len(q):
            del q[:i]
            self._base += i
            i = 0
        self._head = i

    def __len__(self) -> int:
        return self._n

    def __contains__(self, block: Block) -> bool:
        """Whether the block has a live entry (for checks, not the hot path: the live set is
        rebuilt by a scan after any change to the queue)."""
        if self._members is None or self._members[0] != self._version():
            self._members = (self._version(), set(map(id, self._live())))
        return id(block) in self._members[1]

    def _version(self) -> tuple[int, int]:
        """Changes whenever the live set does: entries ever appended (_n + _removed) and ever
        removed only grow."""
        return self._n, self._removed

    def verify(self) -> None:
        rest = self._q[self._head :]
        held = Counter(id(x) for x in rest if x.__class__ is not BlockRun)
        for b, k in self._dead.items():
            assert k > 0 and held[id(b)] >= k, f"LRU counts {k} dead entries of {b!r}, holds {held[id(b)]}"
        assert self._ndead == sum(self._dead.values()), "LRU's dead count disagrees with its entries"
        runs = [x for x in rest if x.__class__ is BlockRun]
        assert list(map(id, self._runs)) == list(map(id, runs)), "LRU's run list disagrees with its entries"
        in_run: dict[int, BlockRun] = {}
        unkeyed: set[int] = set()
        for run in runs:
            assert self._q[run.pos - self._base] is run, f"{run!r} not where its position says"
            assert run.removed <= set(run.ids[run.next :]), f"{run!r}: removed members it has passed"
            members = [b for b in run.queued() if b.block_id not in run.removed]
            if run.keyed:
                in_run.update((id(b), run) for b in members)
            else:
                assert not run.removed, f"{run!r}: a member removed before the run was keyed"
                unkeyed.update(map(id, members))
        assert {id(b): r for b, r in self._in_run.items()} == in_run, "LRU's keyed-run members disagree with the runs"
        live = self._live()
        assert len(live) == self._n, f"LRU queue counts {self._n} live entries, holds {len(live)}"
        assert len({id(b) for b in live}) == len(live), "a block live twice in the LRU queue"
        # A run's blocks keep the count of their range until it is keyed (see BlockRun).
        assert all(b.ref_cnt == 0 for b in live if id(b) not in unkeyed), "LRU queue holds a block in use"


def _skip_removed(run: BlockRun) -> bool:
    """Move the run past removed members at its front; whether a queued one is left."""
    ids, j, removed = run.ids, run.next, run.removed
    while j < len(ids) and ids[j] in removed:
        removed.discard(ids[j])
        j += 1
    run.next = j
    return j < len(ids)
