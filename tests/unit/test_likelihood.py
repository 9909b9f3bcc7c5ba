"""Likelihood tables: units, standard errors, step parsing and data-parallel merging."""
import math

import pytest
import torch

from bfn_core import (BFN, DiscreteBayesianFlow, DiscreteLoss, LikelihoodAccumulator, LikelihoodTable, accumulate_likelihood,
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
    """With R repeats, se_mc = std over repeats of the test-set mean / sqrt(R) (the reference's figure),
    and the vector form used for all-reduce carries every sum."""
    torch.manual_seed(1)
    pi = torch.tensor([0.6, 0.4])
    bfn = _oracle_bfn(pi)
    x = torch.randint(0, 2, (64, 5))
    per_repeat = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        per_repeat.append((bfn.loss(x, 10, g, 10) + bfn.reconstruction_loss(x, g)).double())
    acc = LikelihoodAccumulator([10], n_repeats=4)
    acc.add(10, torch.stack(per_repeat))
    acc.count, acc.dims = 64, 5
    row = acc.table().rows[0]
    means = torch.stack(per_repeat).mean(1)
    assert row.nats == pytest.approx(means.mean().item(), rel=1e-12)
    assert row.nats_se_mc == pytest.approx((means.std() / 2).item(), rel=1e-9)
    ex = torch.stack(per_repeat).mean(0)
    assert row.nats_se_examples == pytest.approx((ex.std() / 8).item(), rel=1e-9)
    again = LikelihoodAccumulator.from_vector([10], 4, acc.to_vector(), dims=5).table()
    assert again == acc.table()


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
