"""Samplers: shapes, reproducibility from a generator, trajectories, and oracle samples."""
import torch

from bfn_core import BFN, ContinuousBayesianFlow, ContinuousLoss, DiscreteBayesianFlow, DiscreteLoss, DiscretisedLoss
from bfn_core.networks import MLP, Transformer, UNet
from oracles import CategoricalOracle, PointsOracle


def _models():
    flow = ContinuousBayesianFlow(0.02)
    return [
        (BFN(MLP((3,), 1, 1, hidden=16, depth=1), ContinuousLoss(flow)), (5, 3)),
        (BFN(UNet((8, 8, 1), 1, 2, width=8, channel_mults=(1, 2), attention_resolutions=(4,)), DiscretisedLoss(flow, 16)), (2, 8, 8, 1)),
        (BFN(Transformer(6, 4, 4, width=16, depth=1), DiscreteLoss(DiscreteBayesianFlow(4, 2.0))), (3, 6)),
        (BFN(MLP((4, 4, 1), 1, 1, hidden=16, depth=1), DiscreteLoss(DiscreteBayesianFlow(2, 3.0))), (3, 4, 4, 1)),
    ]


def test_sampler_shapes_reproducibility_and_trajectory():
    torch.manual_seed(0)
    for bfn, shape in _models():
        for p in bfn.parameters():
            torch.nn.init.normal_(p, std=0.3)
        a = bfn.sample(shape, 7, generator=torch.Generator().manual_seed(5))
        b, traj = bfn.sample(shape, 7, generator=torch.Generator().manual_seed(5), return_trajectory=True)
        _, traj_c = bfn.sample(shape, 7, generator=torch.Generator().manual_seed(6), return_trajectory=True)
        assert a.shape == torch.Size(shape)
        assert torch.equal(a, b)
        assert len(traj) == 8
        assert not torch.equal(traj[0][0], traj[-1][0])
        if isinstance(bfn.loss_fn, DiscreteLoss):
            assert a.dtype == torch.long and a.min() >= 0 and a.max() < bfn.flow.K
        else:
            assert a.min() >= -1 and a.max() <= 1
        # a different seed takes a different path
        assert not torch.equal(traj[-1][0], traj_c[-1][0])


def test_oracle_samples_follow_the_data_distribution():
    """With the exact posterior as the network, samples are draws from the data distribution."""
    torch.manual_seed(0)
    pi = torch.tensor([0.5, 0.3, 0.2])
    bfn = BFN(CategoricalOracle(pi), DiscreteLoss(DiscreteBayesianFlow(3, 4.0)))
    x = bfn.sample((4000, 2), 50, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(x.flatten(), minlength=3).float() / x.numel()
    se = (pi * (1 - pi) / x.numel()).sqrt()
    assert ((freq - pi).abs() < 5 * se + 0.01).all(), freq

    flow = ContinuousBayesianFlow(0.01)
    points, w = torch.tensor([-0.5, 0.5]), torch.tensor([0.7, 0.3])
    cbfn = BFN(PointsOracle(points, w, flow.gamma), ContinuousLoss(flow))
    xs = cbfn.sample((4000, 1), 100, generator=torch.Generator().manual_seed(1))
    near = (xs - points).abs().min(-1).values
    assert (near < 0.05).float().mean() > 0.95
    frac_right = (xs > 0).float().mean()
    assert abs(float(frac_right) - 0.3) < 0.04
