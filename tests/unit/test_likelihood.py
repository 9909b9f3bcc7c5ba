"""Likelihood tables: units, standard errors, step parsing and data-parallel merging."""
import math

import pytest
import torch

from bfn_core import BFN, DiscreteBayesianFlow, DiscreteLoss, LikelihoodAccumulator, LikelihoodTable, evaluate_likelihood, parse_steps
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
        assert row.bits_per_dim_se == pytest.approx(row.nats_se / (6 * math.log(2)))
        assert 0 < row.nats_se < 0.5
        assert abs(row.nats - h) < 5 * row.nats_se + 0.02, (row, h)
    assert "bits/char" in table.format()
    again = LikelihoodTable.from_dict(table.to_dict())
    assert again == table


def test_merged_accumulators_equal_one_pass():
    pi = torch.tensor([0.5, 0.5])
    bfn = _oracle_bfn(pi)
    x = torch.randint(0, 2, (300, 4))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    whole = evaluate_likelihood(bfn, [x[:100], x[100:]], steps=[10], generator=g())
    a = LikelihoodAccumulator([10])
    evaluate_likelihood(bfn, [x[:100]], steps=[10], generator=(gen := g()), accumulator=a)
    b = LikelihoodAccumulator([10])
    evaluate_likelihood(bfn, [x[100:]], steps=[10], generator=gen, accumulator=b)
    a.merge(b)
    merged = a.table()
    assert merged.num_examples == 300
    assert merged.rows[0].nats == pytest.approx(whole.rows[0].nats, rel=1e-9)
    assert merged.rows[0].nats_se == pytest.approx(whole.rows[0].nats_se, rel=1e-9)


def test_parse_steps():
    assert parse_steps("10, 25,inf") == [10, 25, None]
    with pytest.raises(ValueError, match="steps must be integers"):
        parse_steps("ten")


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="no examples were evaluated"):
        evaluate_likelihood(_oracle_bfn(torch.tensor([0.5, 0.5])), [], steps=[10])
