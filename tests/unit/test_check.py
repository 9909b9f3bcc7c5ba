"""`bfn check`: every paper config, unmodified, builds the reference's network at full size (meta device)."""
import json
from pathlib import Path

import pytest

from bfn_platform.cli import main

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
# Parameter counts of the authors' networks with their adapters (nnaisense/bayesian-flow-networks).
REFERENCE = {"cifar10_discretised_256": 30.72e6, "cifar10_discretised_16": 30.72e6, "cifar10_continuous_256": 30.72e6,
             "cifar10_continuous_16": 30.72e6, "mnist_binarised": 24.81e6, "text8": 170.18e6}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_paper_configs_have_the_reference_parameter_counts(name, capsys):
    assert main(["check", str(PAPER / f"{name}.yaml"), "--no-data", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert abs(report["parameters"] / REFERENCE[name] - 1) < 0.01, report["parameters"]
    assert report["activation_bytes_per_example"] > 0
    assert report["global_batch"] == report["workers"] * report["micro_batch"] * report["accumulation_steps"]


def test_check_reports_the_batch_split_and_unusable_data(tmp_path, capsys):
    config = str(PAPER / "text8.yaml")
    assert main(["check", config, "--no-data", "--json", "--set", "scaling.num_workers=4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["global_batch"], report["workers"], report["micro_batch"], report["accumulation_steps"]) == (3328, 4, 416, 2)
    # with data: the manifests under an empty BFN_DATA_URL are missing, named, and the exit status says so
    code = main(["check", config, "--set", f"data.train={tmp_path}/text8/train/manifest.json"])
    out, err = capsys.readouterr()
    assert code == 1 and "NOT USABLE" in out and "no manifest at" in err
