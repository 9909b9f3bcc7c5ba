"""Tiny networks trained for a few hundred steps learn toy data: loss falls, samples match the data."""
import pytest
import torch

from bfn_core import evaluate_likelihood, make_bfn


def _train(bfn, data_fn, steps, lr=2e-3, n_steps=None):
    opt = torch.optim.AdamW(bfn.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        x = data_fn(128)
        loss = bfn.loss(x, n_steps).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(bfn.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses


def _mixture(b, g=torch.Generator().manual_seed(0)):
    centres = torch.tensor([[-0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [0.5, -0.5]])
    return (centres[torch.randint(0, 4, (b,), generator=g)] + 0.05 * torch.randn(b, 2, generator=g)).clamp(-1, 1)


@pytest.mark.slow
def test_mlp_learns_a_2d_mixture():
    torch.manual_seed(0)
    bfn = make_bfn("continuous", (2,), network="mlp", sigma_1=0.01, hidden=128, depth=2)
    x_eval = _mixture(4096, torch.Generator().manual_seed(9))
    before = bfn.loss(x_eval, generator=torch.Generator().manual_seed(0)).mean().item()
    _train(bfn, _mixture, 800, lr=1e-3)  # 3e-3 stalled on a plateau for hundreds of steps on some machines
    after = bfn.loss(x_eval, generator=torch.Generator().manual_seed(0)).mean().item()
    assert after < 0.7 * before, (before, after)
    xs = bfn.sample((1000, 2), 100, generator=torch.Generator().manual_seed(1))
    centres = torch.tensor([[-0.5, -0.5], [0.5, 0.5], [-0.5, 0.5], [0.5, -0.5]])
    dist = torch.cdist(xs, centres).min(-1)
    assert (dist.values < 0.2).float().mean() > 0.85  # samples lie on the modes (std 0.05 each)
    counts = torch.bincount(dist.indices, minlength=4).float() / 1000
    assert (counts > 0.1).all(), counts  # every mode is covered (0.25 each in the data)


TRANSITIONS = torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.8, 0.1, 0.1]])


def _markov(b, g=torch.Generator().manual_seed(0), length=8):
    x = torch.empty(b, length, dtype=torch.long)
    x[:, 0] = torch.randint(0, 3, (b,), generator=g)
    for i in range(1, length):
        x[:, i] = torch.multinomial(TRANSITIONS[x[:, i - 1]], 1, generator=g)[:, 0]
    return x


@pytest.mark.slow
def test_transformer_learns_markov_sequences():
    torch.manual_seed(0)
    bfn = make_bfn("discrete", (8,), network="transformer", num_classes=3, beta_1=3.0, width=64, depth=2)
    x_eval = _markov(2048, torch.Generator().manual_seed(9))
    before = bfn.loss(x_eval, generator=torch.Generator().manual_seed(0)).mean().item()
    _train(bfn, _markov, 400, lr=3e-3)
    after = bfn.loss(x_eval, generator=torch.Generator().manual_seed(0)).mean().item()
    # The chain's entropy is ln 3 + 7 H(0.8, 0.1, 0.1) = 5.57 nats per sequence.
    assert after < 0.5 * before and after < 6.5, (before, after)
    xs = bfn.sample((500, 8), 50, generator=torch.Generator().manual_seed(2))
    pairs = torch.stack([xs[:, :-1].flatten(), xs[:, 1:].flatten()], -1)
    counts = torch.zeros(3, 3)
    counts.index_put_((pairs[:, 0], pairs[:, 1]), torch.ones(len(pairs)), accumulate=True)
    est = counts / counts.sum(-1, keepdim=True)
    # The likely transition (0.8 in the data) dominates every row of the samples' transition
    # matrix: within 0.2 of it after 400 steps of training and 50 sampling steps.
    assert (est.argmax(-1) == TRANSITIONS.argmax(-1)).all(), est
    assert (est.max(-1).values > 0.6).all(), est
    # Its likelihood beats the uniform baseline of 8 ln 3 nats per sequence.
    table = evaluate_likelihood(bfn, [_markov(256)], steps=[10, None], n_repeats=2)
    assert table.row(None).nats < 8 * torch.log(torch.tensor(3.0)).item() - 1.0
