"""The worker's pieces without Ray: the EMA model in eval mode, gradient accumulation, weight decay groups."""
import pytest
import torch
from torch import nn

from bfn_core import make_bfn
from pipelines.config import parse_config
from pipelines.worker import ema_copy, make_optimizer, optimisation_step


def _cfg(**sets):
    raw = {"data": {"train": "m.json", "kind": "discretised", "num_classes": 16},
           "model": {"network": "mlp", "hidden": 16, "depth": 1, "dropout": 0.5}, "flow": {"sigma_1": 0.02},
           "training": {"steps": 10, "batch_size": 8, "grad_clip": None, "ema_decay": 0.5},
           "optimizer": {"lr": 0.1, "weight_decay": 0.0}}
    for key, value in sets.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(raw)


def test_the_ema_model_validates_and_samples_without_dropout():
    """Dropout on while validating made the bound that sweeps optimise a noisy network's; with the EMA
    in eval mode, two samplings with the same seed agree exactly."""
    cfg = _cfg()
    bfn = make_bfn(data_shape=(4,), **cfg.bfn_kwargs())
    with torch.no_grad():
        for p in bfn.parameters():
            p.normal_(0, 0.5)  # the zero-initialised output layer would hide the dropout
    ema = ema_copy(bfn)
    assert not ema.training and all(not p.requires_grad for p in ema.parameters())
    a = ema.sample((6, 4), 5, generator=torch.Generator().manual_seed(0))
    b = ema.sample((6, 4), 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    theta, t = bfn.flow.prior((6, 4)), torch.full((6,), 0.5)
    same = [ema.output_distribution(theta, t).mean for _ in range(2)]
    assert torch.equal(*same)
    bfn.train()  # the training copy does use dropout: the same input gives different outputs
    assert not torch.equal(*[bfn.output_distribution(theta, t).mean for _ in range(2)])


class _Linear(nn.Module):
    """A stand-in for the BFN whose per-example loss is deterministic: sum((w x)^2)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 4))

    def forward(self, x, n_steps=None, n_mc=1, check_data=True):
        return ((self.w * x) ** 2).sum(-1)


def test_accumulated_micro_batches_take_the_step_of_the_whole_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    cfg = _cfg()
    steps = {}
    for parts in (1, 2, 4):
        net = _Linear()
        ema = _Linear().requires_grad_(False)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss, _ = optimisation_step(net, net, ema, opt, list(x.chunk(parts)), cfg, 0, dims=4)
        steps[parts] = (net.w.detach().clone(), loss.item(), ema.w.clone())
    for parts in (2, 4):
        torch.testing.assert_close(steps[parts][0], steps[1][0])
        assert steps[parts][1] == pytest.approx(steps[1][1])
        torch.testing.assert_close(steps[parts][2], steps[1][2])


def test_weight_decay_on_weights_spares_biases_norms_and_embeddings():
    cfg = _cfg(**{"model": {"network": "transformer", "width": 16, "depth": 1, "heads": 2},
                  "data.kind": "discrete", "data.num_classes": 5, "flow.beta_1": 1.0, "flow.sigma_1": None,
                  "optimizer.weight_decay": 0.01, "optimizer.weight_decay_on": "weights"})
    bfn = make_bfn(data_shape=(8,), **cfg.bfn_kwargs())
    opt = make_optimizer(bfn, cfg)
    decayed, spared = (set(map(id, g["params"])) for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.0
    for name, p in bfn.named_parameters():
        module = bfn.get_submodule(name.rsplit(".", 1)[0]) if "." in name else bfn
        is_weight = name.endswith("weight") and isinstance(module, (nn.Linear, nn.Conv2d))
        assert (id(p) in decayed) == is_weight, name
    assert decayed | spared == set(map(id, bfn.parameters()))
    all_cfg = _cfg(**{"optimizer.weight_decay": 0.01})
    assert len(make_optimizer(make_bfn(data_shape=(4,), **all_cfg.bfn_kwargs()), all_cfg).param_groups) == 1


def test_metrics_survive_a_tracking_server_outage(monkeypatch):
    """While MLflow refuses them, metrics stay pending (and go into checkpoints); they are sent, in
    full, once it answers again: no hole in the history, and training is not stopped."""
    import pipelines.tracking as tracking

    sent, down = [], {"now": True}

    def log(client, run_id, metrics):
        if down["now"]:
            raise ConnectionError("tracking server unreachable")
        sent.extend(metrics)

    monkeypatch.setattr(tracking, "_log", log)
    monkeypatch.setattr("mlflow.MlflowClient", lambda *a, **k: None)
    buffer = tracking.MetricBuffer("run-1")
    for step in range(1, 31):
        buffer.add(step, loss=1.0 / step)
        if step % 10 == 0:
            with pytest.warns(UserWarning, match="kept and sent with the next checkpoint") if step == 20 else _no_warning():
                buffer.checkpoint_reported(step)
    assert not sent and [m.step for m in buffer.pending] == list(range(1, 31))
    down["now"] = False
    buffer.flush()
    assert [m.step for m in sent] == list(range(1, 31)) and not buffer.pending


def _no_warning():
    import contextlib

    return contextlib.nullcontext()
