"""Likelihood tables: units, standard errors, step parsing and data-parallel merging."""
import math

import pytest
import torch

from bfn_core import (BFN, BfnError, DiscreteBayesianFlow, DiscreteLoss, LikelihoodAccumulator, LikelihoodTable, accumulate_likelihood,
                      evaluate_likelihood, parse_steps)
from oracles import CategoricalOracle, entropy


def _oracle_bfn(pi):
    return BFN(CategoricalOracle(pi), DiscreteLoss(DiscreteBayesianFlow(len(pi), 3.0)))


def test_table_units_and_entropy():
    torch.manual_seed(0)
    pi = torch.tensor([0.7, 0.2, 0.1])
    bfn = _oracle_bfn(pi)
    batches = [torch.multinomial(pi, 512 * 6, replacement=True).reshape(512, 6) for _ in range(8)]
    table = evaluate_likelihood(bfn, batches, steps=[10, 100, None], n_repeats=2, unit="char")
    assert table.num_examples == 4096 and table.dims == 6 and table.unit == "char"
    h = 6 * entropy(pi)
    for row in table.rows:
        assert row.bits_per_dim == pytest.approx(row.nats / (6 * math.log(2)))
        assert row.bits_se_examples == pytest.approx(row.nats_se_examples / (6 * math.log(2)))
        assert row.bits_se_mc == pytest.approx(row.nats_se_mc / (6 * math.log(2)))
        assert 0 < row.nats_se_examples < 0.5
        assert 0 < row.nats_se_mc < row.nats_se_examples  # the test set is fixed: only the estimator's noise
        assert abs(row.nats - h) < 5 * row.nats_se_examples + 0.02, (row, h)
    assert "bits/char" in table.format()
    again = LikelihoodTable.from_dict(table.to_dict())
    assert again == table


def test_merged_accumulators_equal_one_pass():
    pi = torch.tensor([0.5, 0.5])
    bfn = _oracle_bfn(pi)
    x = torch.randint(0, 2, (300, 4))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    whole = evaluate_likelihood(bfn, [x[:100], x[100:]], steps=[10], generator=g())
    a = accumulate_likelihood(bfn, [x[:100]], LikelihoodAccumulator([10]), generator=(gen := g()))
    b = accumulate_likelihood(bfn, [x[100:]], LikelihoodAccumulator([10]), generator=gen)
    assert accumulate_likelihood(bfn, [], LikelihoodAccumulator([10])).count == 0  # a share of only padding
    a.merge(b)
    merged = a.table()
    assert merged.num_examples == 300
    assert merged.rows[0].nats == pytest.approx(whole.rows[0].nats, rel=1e-9)
    assert merged.rows[0].nats_se_examples == pytest.approx(whole.rows[0].nats_se_examples, rel=1e-9)


def test_monte_carlo_se_is_the_spread_of_the_repeats_means():
    """With R repeats, se_mc = std over repeats of the test-set mean / sqrt(R) (the reference's figure)."""
    torch.manual_seed(1)
    pi = torch.tensor([0.6, 0.4])
    bfn = _oracle_bfn(pi)
    x = torch.randint(0, 2, (64, 5))
    per_repeat = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        per_repeat.append((bfn.loss(x, 10, g, 10) + bfn.reconstruction_loss(x, g)).double())
    acc = LikelihoodAccumulator([10], n_repeats=4)
    acc.add_batch({10: torch.stack(per_repeat)}, dims=5)
    assert (acc.count, acc.dims) == (64, 5)
    row = acc.table().rows[0]
    means = torch.stack(per_repeat).mean(1)
    assert row.nats == pytest.approx(means.mean().item(), rel=1e-12)
    assert row.nats_se_mc == pytest.approx((means.std() / 2).item(), rel=1e-9)
    ex = torch.stack(per_repeat).mean(0)
    assert row.nats_se_examples == pytest.approx((ex.std() / 8).item(), rel=1e-9)
    assert acc.all_reduce() is acc and acc.table().rows[0] == row  # no process group: a no-op


def _bounds(seed: int, batch: int, n_repeats: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {s: torch.rand(n_repeats, batch, generator=g, dtype=torch.float64) * 10 for s in (10, None)}


def _all_reduce_rank(rank: int, world: int, folder: str) -> None:
    """One rank of a gloo group: rank 1 sees no examples (dims 0), the others a batch each."""
    import json
    import os

    import torch.distributed as dist

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        acc = LikelihoodAccumulator([10, None], n_repeats=3)
        if rank != 1:
            acc.add_batch(_bounds(rank, 5 + rank, 3), dims=7)
        table = acc.all_reduce(torch.device("cpu") if rank == 0 else None).table()  # None: the backend's device
        with open(f"{folder}/rank{rank}.json", "w") as f:
            json.dump(table.to_dict(), f)
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_every_rank_including_one_without_examples(tmp_path):
    import json

    import torch.multiprocessing as mp

    world = 3
    mp.spawn(_all_reduce_rank, args=(world, str(tmp_path)), nprocs=world, join=True)
    one = LikelihoodAccumulator([10, None], n_repeats=3)
    for rank in (0, 2):
        one.add_batch(_bounds(rank, 5 + rank, 3), dims=7)
    expected = one.table()
    for rank in range(world):
        got = LikelihoodTable.from_dict(json.loads((tmp_path / f"rank{rank}.json").read_text()))
        assert (got.num_examples, got.dims, got.n_repeats) == (12, 7, 3)
        for a, b in zip(got.rows, expected.rows):
            assert a.steps == b.steps
            assert a.nats == pytest.approx(b.nats, rel=1e-12)
            assert a.nats_se_examples == pytest.approx(b.nats_se_examples, rel=1e-9)
            assert a.nats_se_mc == pytest.approx(b.nats_se_mc, rel=1e-9)


def test_add_batch_rejects_an_inconsistent_batch():
    acc = LikelihoodAccumulator([10, None], n_repeats=2)
    with pytest.raises(BfnError, match="needs bounds for the step counts"):
        acc.add_batch({10: torch.zeros(2, 4)}, dims=3)
    with pytest.raises(BfnError, match="same examples"):
        acc.add_batch({10: torch.zeros(2, 4), None: torch.zeros(2, 5)}, dims=3)
    acc.add_batch({10: torch.zeros(2, 4), None: torch.zeros(2, 4)}, dims=3)
    with pytest.raises(BfnError, match="examples of 5 dimensions"):
        acc.add_batch({10: torch.zeros(2, 4), None: torch.zeros(2, 4)}, dims=5)
    assert (acc.count, acc.dims) == (4, 3)  # a rejected batch changes nothing
    other = LikelihoodAccumulator([10, None], n_repeats=2)
    other.merge(acc)  # an empty accumulator takes the other's dims
    assert (other.count, other.dims) == (4, 3)


def test_monotone_violations_flag_a_bound_that_rises_with_n():
    from bfn_core.likelihood import LikelihoodRow

    rows = [LikelihoodRow(10, 5.0, 0.1, 0.01, 1.0, 0.02, 0.002), LikelihoodRow(100, 4.9, 0.1, 0.01, 0.98, 0.02, 0.002),
            LikelihoodRow(None, 5.2, 0.1, 0.01, 1.04, 0.02, 0.002)]
    assert LikelihoodTable(rows, 10, 5, n_repeats=4).monotone_violations() == [("n100", "inf")]
    rows[2] = LikelihoodRow(None, 4.92, 0.1, 0.01, 0.984, 0.02, 0.002)  # within 2 combined MC s.e.
    assert LikelihoodTable(rows, 10, 5, n_repeats=4).monotone_violations() == []


def test_tables_written_before_the_two_standard_errors_still_load():
    old = {"num_examples": 3, "dims": 4, "unit": "dim", "rows": [
        {"steps": None, "label": "inf", "nats": 2.0, "nats_se": 0.1, "bits_per_dim": 0.7, "bits_per_dim_se": 0.03}]}
    row = LikelihoodTable.from_dict(old).rows[0]
    assert row.nats_se_examples == 0.1 and row.bits_se_examples == 0.03 and row.nats_se_mc is None


def test_parse_steps():
    assert parse_steps("10, 25,inf") == [10, 25, None]
    with pytest.raises(ValueError, match="steps must be integers"):
        parse_steps("ten")


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="no examples were evaluated"):
        evaluate_likelihood(_oracle_bfn(torch.tensor([0.5, 0.5])), [], steps=[10])
