"""Which training failures are retried and which end the run at once, and how they read: one line that
names the shard or the stored checkpoint, cut at a word and never inside one."""
import json

import pytest
import torch

from pipelines.checkpoints import load_checkpoint, load_weights, opened, save_checkpoint, stored_location
from pipelines.errors import (
    CheckpointError,
    DeterministicError,
    ManifestError,
    PipelineError,
    ShardError,
    StorageError,
    UnsupportedReadError,
    deterministic_cause,
    one_line,
)

SHARD = ShardError("s3://data/digits/train/train-000003-e3.tar", "s3://data/digits/train/manifest.json",
                   "sha256 21830f differs from the manifest's e39995")
STORED = "s3://bucket/checkpoints/bfn-0123/checkpoint_000003"


# ----------------------------------------------------------------------------------- classification

@pytest.mark.parametrize("err", [SHARD, ManifestError("m.json is not a bfn shard manifest"),
                                 CheckpointError(f"checkpoint file {STORED}/ema.pt is corrupt"),
                                 UnsupportedReadError("cannot read continuous data as discrete")])
def test_data_and_checkpoint_faults_are_deterministic(err):
    assert isinstance(err, DeterministicError) and deterministic_cause(err) is err


@pytest.mark.parametrize("err", [StorageError("could not reach the S3 endpoint http://127.0.0.1:9"),
                                 RuntimeError("Connection reset by peer"), ConnectionError("refused"),
                                 PipelineError("rank 1 yielded 3 batches instead of 4"), None])
def test_transient_and_unknown_faults_are_retried(err):
    assert deterministic_cause(err) is None


def test_a_shard_error_from_a_dataloader_worker_stays_deterministic():
    # torch's ExceptionWrapper re-creates the error in the main process from the worker's traceback text
    text = f"Caught ShardError in DataLoader worker process 0.\nTraceback (most recent call last):\n  ...\n" \
           f"pipelines.errors.ShardError: {SHARD}\n"
    again = ShardError(text)
    assert deterministic_cause(again) is again and str(again) == str(SHARD)


def test_the_cause_is_found_inside_ray_wrappers():
    import ray.cloudpickle as cloudpickle
    from ray.exceptions import RayActorError
    from ray.train import ControllerError, WorkerGroupError

    group = WorkerGroupError("rank 0: ...", {0: RuntimeError("gloo: connection closed by peer"), 1: SHARD})
    assert deterministic_cause(group) is SHARD
    assert deterministic_cause(WorkerGroupError("killed", {0: RayActorError()})) is None
    # what the driver gets back from the controller, pickled across two processes
    back = cloudpickle.loads(cloudpickle.dumps(ControllerError(SHARD)))
    assert str(deterministic_cause(back)) == str(SHARD)

    class TaskError(Exception):  # a RayTaskError holds the original as .cause
        cause = SHARD
    assert deterministic_cause(TaskError()) is SHARD
    TaskError.cause = "not an exception"
    assert deterministic_cause(TaskError()) is None
    try:
        raise PipelineError("training run r failed") from SHARD
    except PipelineError as err:
        assert deterministic_cause(err) is SHARD


def test_an_error_raised_while_handling_a_shard_error_is_not_caused_by_it():
    try:
        try:
            raise SHARD
        except ShardError:
            raise RuntimeError("cleanup failed")  # noqa: B904  (its __context__, not its cause)
    except RuntimeError as err:
        assert deterministic_cause(err) is None


# ------------------------------------------------------------------ Ray Train's decision for each kind

def _decision(err):
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

    return DefaultFailurePolicy(FailureConfig(max_failures=2)).make_decision(err).value


def test_the_callback_turns_a_deterministic_worker_error_into_one_ray_does_not_retry():
    """Pins the Ray Train 2.60 behaviour the fail-fast relies on (pipelines.training's docstring)."""
    import ray.cloudpickle as cloudpickle
    from ray.exceptions import RayActorError
    from ray.train import ControllerError, WorkerGroupError

    from pipelines.training import stop_on_deterministic_error

    callback = cloudpickle.loads(cloudpickle.dumps(stop_on_deterministic_error()))  # as the controller gets it
    with pytest.raises(ControllerError) as raised:
        callback.after_exception(None, {1: RuntimeError("gloo: connection closed by peer"), 0: SHARD})
    assert raised.value.controller_failure is SHARD
    assert _decision(raised.value) == "RAISE"

    for transient in (RayActorError(), RuntimeError("Connection reset by peer"), StorageError("unreachable")):
        assert callback.after_exception(None, {0: transient}) is None  # left to Ray's policy, which retries
        assert _decision(WorkerGroupError("...", {0: transient})) == "RETRY"


# ----------------------------------------------------------------------------------------- messages

def test_one_line_cuts_at_a_word_and_says_so():
    text = "PytorchStreamReader failed reading zip archive: failed finding central directory\nsecond line"
    assert one_line(text) == text.splitlines()[0]
    assert one_line(text, last=True) == "second line"
    cut = one_line(text, 40)
    assert cut.endswith("…") and len(cut) <= 40
    head = cut[:-1]
    assert text.startswith(head) and text[len(head)] == " ", cut  # the next character is a space: whole words
    assert one_line("x" * 50, 20) == "x" * 19 + "…"  # no space to cut at (a long URL): cut where it must be
    torch_like = "failed finding central directory. This is an internal miniz error. If you are seeing this"
    assert one_line(torch_like, 60) == "failed finding central directory."  # whole sentences where they fit
    assert one_line("  \n\n", 10) == ""


def test_failure_message_names_the_shard_and_keeps_whole_words():
    from ray.train import ControllerError

    from pipelines.training import failure_message

    assert failure_message(ControllerError(SHARD)) == str(SHARD)  # the shard and its manifest, no type names
    long = RuntimeError("Traceback ...\n" + "the process group timed out waiting for rank 1 " * 20)
    message = failure_message(long)
    assert message.startswith("RuntimeError: the process group") and message.endswith("…") and len(message) <= 500
    body = message[len("RuntimeError: "):-1]
    full = str(long).splitlines()[-1].strip()
    assert full.startswith(body) and full[len(body)] == " "


# ------------------------------------------------------------------------------ checkpoint errors name

@pytest.fixture
def checkpoint(tmp_path):
    """A real checkpoint folder (a local copy of a stored one) of a tiny network."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    folder = tmp_path / "downloaded-copy"
    save_checkpoint(folder, model=model, ema=model, optimizer=opt, step=3, config={"x": 1})
    return folder


def _torch_error(path) -> str:
    try:
        torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001
        return str(err).splitlines()[0]
    raise AssertionError("loaded")


def test_a_corrupt_checkpoint_file_names_the_stored_object_and_torch_s_whole_message(checkpoint):
    data = (checkpoint / "ema.pt").read_bytes()
    (checkpoint / "ema.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as raised:
        load_weights(checkpoint, "ema", STORED)
    message = str(raised.value)
    assert f"{STORED}/ema.pt is corrupt" in message and str(checkpoint) not in message and "\n" not in message
    reason = _torch_error(checkpoint / "ema.pt")  # several sentences; the first says what happened
    shown = message.split("(RuntimeError: ", 1)[1].rsplit(");", 1)[0]
    assert reason.startswith(shown) and shown.endswith(".") and reason[len(shown):][:1] in ("", " "), shown
    assert "failed finding central directory." in shown  # whole sentences of it, not cut mid-word
    assert "--resume" not in message and deterministic_cause(raised.value) is raised.value


def test_missing_mismatched_and_unreadable_parts_of_a_checkpoint_name_it(checkpoint):
    from pipelines.tracking import MetricBuffer

    small, big = torch.nn.Linear(3, 2), torch.nn.Linear(4, 2)
    with pytest.raises(CheckpointError, match=f"checkpoint {STORED} does not match the model of this config"):
        load_checkpoint(checkpoint, model=big, ema=big, optimizer=torch.optim.AdamW(big.parameters()), location=STORED)
    (checkpoint / "metrics.json").write_text('[{"key": "loss", "val')
    with pytest.raises(CheckpointError, match=f"{STORED}/metrics.json is corrupt"):
        MetricBuffer("run-1").resume(checkpoint, STORED)
    (checkpoint / "model.pt").unlink()
    with pytest.raises(CheckpointError, match=f"{STORED}/model.pt is missing"):
        load_checkpoint(checkpoint, model=small, ema=small, optimizer=torch.optim.AdamW(small.parameters()),
                        location=STORED)
    with pytest.raises(CheckpointError, match=f"{checkpoint}/model.pt is missing"):  # no location: the folder
        load_weights(checkpoint, "model")


def test_the_stored_location_of_a_ray_checkpoint():
    import pyarrow.fs
    from ray.train import Checkpoint

    s3 = pyarrow.fs.S3FileSystem(endpoint_override="127.0.0.1:9", scheme="http", region="us-east-1")
    assert stored_location(Checkpoint("bucket/checkpoints/bfn-0123/checkpoint_000003", filesystem=s3)) == STORED
    assert stored_location(Checkpoint("/data/ray/bfn-0123/checkpoint_000003")) == "/data/ray/bfn-0123/checkpoint_000003"


def test_opened_names_a_local_checkpoint_where_it_is(checkpoint):
    from ray.train import Checkpoint

    with opened(Checkpoint(str(checkpoint))) as (folder, location):
        assert folder == location == str(checkpoint)


# ------------------------------------------------------------------ metrics while MLflow does not answer

def test_a_resumed_checkpoint_s_metrics_wait_for_mlflow_and_travel_on(monkeypatch, tmp_path):
    """Resumed while MLflow is down: the checkpoint's unsent rows are kept (training goes on), written
    into the next checkpoint, and sent first once MLflow answers."""
    import pipelines.tracking as tracking

    rows = [{"key": "loss", "value": 1.0, "timestamp": 1, "step": s} for s in (5, 10)]
    (tmp_path / "metrics.json").write_text(json.dumps(rows))
    sent, down = [], {"now": True}

    def missing(run_id, saved):
        if down["now"]:
            raise ConnectionError("tracking server unreachable")
        sent.extend(r["step"] for r in saved)

    def log(client, run_id, metrics):
        if down["now"]:
            raise ConnectionError("tracking server unreachable")
        sent.extend(m.step for m in metrics)

    monkeypatch.setattr(tracking, "log_missing_metrics", missing)
    monkeypatch.setattr(tracking, "_log", log)
    monkeypatch.setattr("mlflow.MlflowClient", lambda *a, **k: None)
    buffer = tracking.MetricBuffer("run-1")
    with pytest.warns(UserWarning, match="kept and sent with the next checkpoint"):
        buffer.resume(tmp_path)
    buffer.add(15, loss=0.5)
    buffer.checkpoint_reported(15)
    buffer.save(tmp_path)  # the next checkpoint holds the carried rows and the new ones
    assert [r["step"] for r in json.loads((tmp_path / "metrics.json").read_text())] == [5, 10, 15]
    down["now"] = False
    buffer.flush()
    assert sent == [5, 10, 15] and not buffer.carried and not buffer.pending
