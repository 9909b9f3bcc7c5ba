"""A resumed run sees the data an uninterrupted run would have seen from its checkpoint's step on."""
import itertools

import pytest
import torch

from pipelines.config import load_config
from pipelines.data.writer import write_shards
from pipelines.worker import train_batches


@pytest.fixture(scope="module")
def digits_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    write_shards("digits", "test", str(root), shard_size=100)
    manifest = root / "test" / "manifest.json"
    return load_config("configs/digits_discretised.yaml", {"data.train": str(manifest), "training.batch_size": 16,
                                                          "scaling.num_workers": 1})


@pytest.mark.parametrize("start", [0, 5, 19, 40])  # 297 test digits / 16 = 19 batches per epoch
def test_resume_continues_the_uninterrupted_order(digits_cfg, start):
    device = torch.device("cpu")
    full = list(itertools.islice(train_batches(digits_cfg, 0, 1, 0, device), start + 6))
    resumed = list(itertools.islice(train_batches(digits_cfg, 0, 1, start, device), 6))
    for a, b in zip(full[start:], resumed):
        assert torch.equal(a, b)
