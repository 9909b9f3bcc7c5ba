"""Session-wide real services for the integration tests: a two-node Ray cluster and an MLflow server."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from services import mlflow_server, ray_cluster  # noqa: E402


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory):
    """A real `mlflow server` process on 127.0.0.1 (started once: it takes ~15-30 s)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="session")
def ray_two_nodes():
    """A two-node Ray cluster on 127.0.0.1, this test process connected as its driver."""
    with ray_cluster(num_nodes=2, cpus_per_node=2) as cluster:
        import ray

        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        addresses = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        assert len(addresses) == 2 and all(a.startswith("127.") for a in addresses), addresses
        yield cluster


@pytest.fixture
def tracked(mlflow_url, tmp_path, monkeypatch):
    """Point MLflow at the test server and keep local state in a temporary BFN_HOME."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    monkeypatch.setenv("BFN_HOME", str(tmp_path / ".bfn"))
    import mlflow

    mlflow.set_tracking_uri(mlflow_url)
    return mlflow_url


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory):
    """scikit-learn's digits as train, val and test shard sets (100 examples a shard) on local disk."""
    from pipelines.data.writer import write_shards

    root = tmp_path_factory.mktemp("shards") / "digits"
    for split in ("train", "val", "test"):
        write_shards("digits", split, str(root), shard_size=100)
    return root
