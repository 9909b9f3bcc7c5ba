"""How an epoch is shared out: every sample once, equal counts per worker, reproducible orders."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from pipelines.data.epoch_plan import shard_order, shuffled, slot_plan


def positions(counts, order, plan):
    """Global positions (in the epoch's order) that a plan reads."""
    starts, pos = {}, 0
    for shard in order:
        starts[shard] = pos
        pos += counts[shard]
    return [starts[p.shard] + p.skip + i for p in plan.pieces for i in range(p.take)]


@pytest.mark.parametrize("counts,slots", [
    ([100] * 15, 4),  # divides evenly
    ([64] * 4 + [41], 4),  # uneven last shard: 297 samples, 3 slots pad one each
    ([10, 3, 7, 1, 9], 6),  # irregular shards, more slots than shards
    ([5], 8),  # fewer samples than slots
    ([1000, 1], 3),
])
def test_every_sample_belongs_to_exactly_one_slot_and_slots_yield_equal_counts(counts, slots):
    total = sum(counts)
    order = shard_order(len(counts), seed=1, epoch=2, shuffle=True)
    seen = Counter()
    per_slot = set()
    own = []
    for slot in range(slots):
        plan = slot_plan(counts, order, slots=slots, slot=slot)
        seen.update(positions(counts, order, plan))
        per_slot.add(plan.per_slot)
        own.append(plan.own)
        assert sum(p.take for p in plan.pieces) == plan.own
        assert all(0 <= p.skip and p.skip + p.take <= counts[p.shard] for p in plan.pieces)
        if plan.own == 0:
            assert sum(p.take for p in plan.pad_pieces) == 1
    assert sorted(seen) == list(range(total)) and set(seen.values()) == {1}
    assert per_slot == {-(-total // slots)}
    assert max(own) - min(own) <= 1
    assert sum(plan_pad := [-(-total // slots) - o for o in own]) == slots * -(-total // slots) - total
    assert max(plan_pad) <= 1


def test_each_slot_reads_a_contiguous_run_of_shards():
    counts = [100] * 20
    order = shard_order(20, seed=0, epoch=0, shuffle=True)
    for slot in range(8):
        plan = slot_plan(counts, order, slots=8, slot=slot)
        assert len(plan.pieces) <= 4  # 250 samples: at most two partial shards plus two whole ones


def test_shard_order_is_a_seeded_permutation_per_epoch():
    a = shard_order(50, seed=7, epoch=0, shuffle=True)
    assert sorted(a) == list(range(50))
    assert a == shard_order(50, seed=7, epoch=0, shuffle=True)
    assert a != shard_order(50, seed=7, epoch=1, shuffle=True)
    assert a != shard_order(50, seed=8, epoch=0, shuffle=True)
    assert shard_order(50, seed=7, epoch=3, shuffle=False) == list(range(50))


def test_shuffle_buffer_is_a_reproducible_permutation():
    items = list(range(1000))
    out = list(shuffled(iter(items), 100, random.Random(3)))
    assert sorted(out) == items and out != items
    assert out == list(shuffled(iter(items), 100, random.Random(3)))
    assert list(shuffled(iter(items[:10]), 100, random.Random(3))) != items[:10]  # short input: still shuffled
