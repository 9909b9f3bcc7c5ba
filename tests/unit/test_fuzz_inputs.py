"""Fuzzing the edge: a seeded corpus of broken configs and sweep specs, each of which must be refused
with one clear line (a PipelineError naming the file) and never an unexpected exception, which the
command line would show as `error: TypeError: ...`. Values are drawn from a fixed set of bad ones
(wrong types, signs, sizes, special floats, structure). Every refused case also goes through the
command line itself (`bfn check`, `bfn sweep`, in-process): exit 1, one `error:` line, no traceback."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config
from pipelines.errors import PipelineError
from sweeps.spec import check_spec, load_spec

REPO = Path(__file__).resolve().parents[2]
BAD_VALUES = [None, -1, 0, -0.5, 1e308, float("nan"), float("inf"), "x", "", [], {}, [1, 2], {"a": 1}, True, "1e-3x",
              10**12, -10**12, "inf", "null", [None]]
STRUCTURE = ["- a list\n- not a mapping\n", "just text\n", "data: [unclosed\n", "data:\n  train: x\n kind: y\n",
             "{a: 1}\n", "\t tab: bad\n", "data: !!python/object:os.system x\n"]


def _paths(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from _paths(value, path + ".")


def _set(raw, path, value):
    node = raw
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part), dict) else node
    node[leaf] = value


def _corpus(base: Path, n: int, seed: int):
    raw = yaml.safe_load(base.read_text())
    paths = list(_paths(raw)) + ["unknown_section", "data.unknown_field", "training.no_such_thing"]
    rng = random.Random(seed)
    for i in range(n):
        if i % 25 == 0:
            yield STRUCTURE[(i // 25) % len(STRUCTURE)]
            continue
        case = yaml.safe_load(base.read_text())
        for _ in range(rng.randint(1, 3)):
            _set(case, rng.choice(paths), rng.choice(BAD_VALUES))
        yield yaml.safe_dump(case, allow_unicode=True)


def _refused_in_one_line(load, text: str, path: Path) -> bool:
    path.write_text(text)
    try:
        load(path)
    except PipelineError as err:
        message = str(err)
        assert "\n" not in message.strip() and message.strip(), message
        assert str(path) in message or "--set" in message or "sweep" in message, message
        return True
    return False  # some draws are valid (a bad value replaced by another valid one)


def _cli_refuses(argv: list[str], capsys) -> None:
    """`bfn ARGV` exits 1 with one `error:` line naming the problem: no traceback, no unexpected exception."""
    from bfn_platform.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "--debug" not in err, err  # "rerun with --debug" marks an unexpected exception


def test_broken_configs_get_one_clear_line(tmp_path, capsys):
    refused = 0
    for text in _corpus(REPO / "configs" / "digits_discretised.yaml", 260, seed=0):
        if _refused_in_one_line(load_config, text, tmp_path / "c.yaml"):
            refused += 1
            _cli_refuses(["check", str(tmp_path / "c.yaml"), "--no-data"], capsys)
    assert refused >= 200, refused


def test_broken_sweep_specs_get_one_clear_line(tmp_path, capsys):
    base = REPO / "configs" / "sweeps" / "digits_sigma.yaml"
    spec_dir = tmp_path / "sweeps"
    spec_dir.mkdir()
    (tmp_path / "digits_discretised.yaml").write_text((REPO / "configs" / "digits_discretised.yaml").read_text())

    def load(path):
        return check_spec(load_spec(path))

    refused = 0
    for text in _corpus(base, 220, seed=1):
        if _refused_in_one_line(load, text, spec_dir / "s.yaml"):  # refused before Ray starts, so safe to run
            refused += 1
            _cli_refuses(["sweep", str(spec_dir / "s.yaml")], capsys)
    assert refused >= 200, refused


@pytest.mark.parametrize("text", STRUCTURE)
def test_structural_breakage_names_the_file(tmp_path, text):
    assert _refused_in_one_line(load_config, text, tmp_path / "c.yaml")
