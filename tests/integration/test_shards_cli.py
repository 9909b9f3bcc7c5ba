"""`bfn data shard` and `bfn data inspect` through the real CLI entry point, and its one-line errors."""
from __future__ import annotations

import json

import pytest

from bfn_platform import cli
from pipelines.data.localserver import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def bfn(monkeypatch, capsys):
    """Run `bfn ARGS...` in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["data"])  # only the command group under test

    def run(*args: str):
        code = cli.main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_shard_then_inspect_an_image_set(bfn, storage_root, tmp_path):
    code, out, err = bfn("data", "shard", "digits", "--split", "test", "--out", storage_root, "--shard-size", "100")
    assert code == 0, err
    assert "wrote 297 digits/test samples in 3 shards" in out
    manifest_url = f"{storage_root}/test/manifest.json"
    assert f"manifest: {manifest_url}" in out
    picture = tmp_path / "grid.png"
    code, out, err = bfn("data", "inspect", f"{storage_root}/test", "--picture", str(picture), "--n", "16")
    assert code == 0, err
    assert "digits / test" in out and "297 in 3 shards" in out and "discretised K=17" in out
    assert "all 3 match their sha256 and size" in out  # every shard checked, by default
    assert "labels y      10 classes (0: 33, 1: 33, 2: 42, 3: 22, 4: 37, 5: 24, 6: 30, 7: 23, 8: 22, 9: 31)" in out
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a truncated shard (its first records intact) fails inspect, naming the shard and the manifest
    from pipelines.data import storage
    from pipelines.data.manifest import load_manifest

    m = load_manifest(manifest_url)
    last = m.shard_url(len(m.shards) - 1)
    storage.write_bytes(last, storage.read_bytes(last)[:4096])
    code, out, err = bfn("data", "inspect", manifest_url, "--picture", str(picture))
    assert_one_line_error(code, err, m.shards[-1].name, "manifest.json", "truncated")


def test_inspect_prints_sequences_as_text(bfn, tmp_path):
    out_dir = tmp_path / "sets"
    code, _, err = bfn("data", "shard", "synthetic-markov", "--out", str(out_dir), "--limit", "50", "--seed", "2")
    assert code == 0, err
    manifest = json.loads((out_dir / "train" / "manifest.json").read_text())
    assert manifest["num_samples"] == 50 and manifest["seed"] == 2
    lines = tmp_path / "lines.txt"
    code, out, err = bfn("data", "inspect", str(out_dir / "train" / "manifest.json"), "--picture", str(lines))
    assert code == 0, err
    written = lines.read_text().splitlines()
    assert len(written) == 8 and all(len(w) == 16 and set(w) <= set("abcd") for w in written)
    assert f"|{written[0]}|" in out

    # without labels (--no-labels): the set is as it was before labels existed, and inspect says so
    code, _, err = bfn("data", "shard", "synthetic-markov", "--out", str(out_dir), "--limit", "50", "--no-labels")
    assert code == 0, err
    manifest = json.loads((out_dir / "train" / "manifest.json").read_text())
    assert set(manifest["schema"]) == {"x"} and manifest["format_version"] == 1
    code, out, err = bfn("data", "inspect", str(out_dir / "train"), "--picture", str(lines))
    assert code == 0, err
    assert "labels y      none (no class labels in this set)" in out


def assert_one_line_error(code, err, *fragments):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_data_set(bfn, tmp_path):
    code, _, err = bfn("data", "shard", "mnits", "--out", str(tmp_path))
    assert_one_line_error(code, err, "unknown data set 'mnits'", "choose one of mnist,")


def test_unknown_split(bfn, tmp_path):
    code, _, err = bfn("data", "shard", "digits", "--split", "valid", "--out", str(tmp_path))
    assert_one_line_error(code, err, "digits has no split 'valid'", "choose one of train, val, test")


def test_unwritable_output(bfn, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = bfn("data", "shard", "digits", "--out", str(blocker / "out"))
    assert_one_line_error(code, err, "cannot write to", "choose a writable --out")


def test_unreachable_s3_endpoint(bfn, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = bfn("data", "shard", "digits", "--out", "s3://bucket/sets")
    assert_one_line_error(code, err, "could not reach the S3 endpoint http://127.0.0.1:", "set AWS_ENDPOINT_URL")
    assert "not-a-real-secret" not in err and "testing" not in err


def test_missing_bucket(bfn, s3_env):
    code, _, err = bfn("data", "shard", "digits", "--out", "s3://no-such-bucket-here/sets")
    assert_one_line_error(code, err, "bucket 'no-such-bucket-here' does not exist", "create it")


def test_offline_download(bfn, monkeypatch, tmp_path):
    monkeypatch.setenv("BFN_OFFLINE", "1")
    monkeypatch.setenv("BFN_DATA_CACHE", str(tmp_path / "cache"))
    code, _, err = bfn("data", "shard", "text8", "--out", str(tmp_path / "out"))
    assert_one_line_error(code, err, "could not download text8 from http://mattmahoney.net/dc/text8.zip: place the "
                                     f"files in {tmp_path / 'cache' / 'text8'} or pass --source-dir")


def test_inspect_without_a_manifest(bfn, tmp_path):
    code, _, err = bfn("data", "inspect", str(tmp_path))
    assert_one_line_error(code, err, "no manifest at", "bfn data shard")


def test_help_has_examples(bfn, capsys):
    for args in (["data", "shard", "--help"], ["data", "inspect", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(args)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and "bfn data" in out
