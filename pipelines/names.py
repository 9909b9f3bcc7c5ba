"""Names that several modules or layers write and read, spelled here once: the bottom floor of
pipelines (it imports nothing), so the sweeps, the command line and bfn_platform.settings use the
same strings as the trainer that writes them.

- Run tags: what ties an MLflow run to its checkpoints, data, models and evaluation.
- Metric names: what the worker reports (to Ray and MLflow) and what sweeps, `bfn runs` and the
  promotion guard read back; `val_metric` / `test_metric` build them from a step label
  (bfn_core.steps_label: 'n10' ... or 'inf').
- Environment variables that connect the pieces (infra/README.md has who sets each one), and the
  lists of them that travel to Ray workers and jobs.
"""
from __future__ import annotations

# --- run tags --------------------------------------------------------------------------------------
TAG_RAY_RUN_NAME = "bfn.ray_run_name"  # the Ray Train run (storage folder) holding the run's checkpoints
TAG_STORAGE = "bfn.storage_path"
TAG_DATA_SHAPE = "bfn.data_shape"
TAG_KIND = "bfn.kind"
TAG_ERROR = "bfn.error"
TAG_MODEL_ID = "bfn.model_id"  # the run's model: what a run id stands for in eval, sample, register
TAG_TEST_SHA = "bfn.eval.test_sha256"  # content digest of the test shards a run was evaluated on
TAG_TEST_MANIFEST = "bfn.eval.test_manifest"
TAG_SWEEP = "bfn.sweep"
TAG_SWEEP_TRIAL = "bfn.sweep.trial_id"
TAG_SWEEP_STATUS = "bfn.sweep.status"  # completed | stopped_early | failed | running
TAG_SWEEP_PARENT = "bfn.sweep.parent"
TAG_SWEEP_BEST_RUN = "bfn.sweep.best_run_id"
TAG_SWEEP_PARETO = "bfn.sweep.pareto_run_ids"  # a multi-objective or sampler sweep's front, comma-separated
TAG_RECOMMENDED = "bfn.recommended"  # bfn.recommended.sampler / .steps / .grid / .quality / .sweep on a model version
TAG_REGISTERED_RUN = "bfn.run_id"  # on a registered model version: the run it came from


def tag_model_id(role: str) -> str:
    """The tag holding the model id of the run's 'final' or 'best' (best-validation) EMA weights."""
    return f"{TAG_MODEL_ID}.{role}"


def tag_data(split: str, what: str) -> str:
    """bfn.data.<split>.sha256 (content digest) or .manifest (URL) of a run's train/val/test shards."""
    return f"bfn.data.{split}.{what}"


# --- metric names ----------------------------------------------------------------------------------
LOSS = "loss"
STEP = "step"
SAMPLES_PER_SECOND = "samples_per_second"
RESUMED_FROM_STEP = "resumed_from_step"
CHECKPOINT_SCORE = "checkpoint_score"  # a checkpoint's validation bound; +inf where it was not validated
SE_KINDS = ("examples", "mc")
LEGACY_SE = "test_bits_se_{label}"  # runs evaluated before the two standard errors had their own names


def val_metric(label: str, unit: str = "bits") -> str:
    """The validation bound at one step label, in bits (per dim or char) or nats per example."""
    return f"val_{unit}_{label}"


def test_metric(label: str, unit: str = "bits") -> str:
    """The test bound at one step label (`bfn eval`)."""
    return f"test_{unit}_{label}"


def test_se_metric(label: str, kind: str = "examples", unit: str = "bits") -> str:
    """A standard error of the test bound: across test 'examples', or Monte Carlo ('mc') across repeats."""
    if kind not in SE_KINDS:
        raise ValueError(f"standard error kind must be one of {SE_KINDS}, not {kind!r}")
    return f"test_{unit}_se_{kind}_{label}"


def reported_metrics(val_labels) -> set[str]:
    """Every metric a training report carries, for validation at the given step labels."""
    names = {LOSS, STEP, SAMPLES_PER_SECOND, CHECKPOINT_SCORE}
    for label in val_labels:
        names |= {val_metric(label), val_metric(label, "nats")}
    return names


# --- environment variables -------------------------------------------------------------------------
ENV_RAY_ADDRESS = "RAY_ADDRESS"
ENV_RAY_AUTH_MODE = "RAY_AUTH_MODE"
ENV_RAY_AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
ENV_MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MLFLOW_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_MLFLOW_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
ENV_AWS_ENDPOINT_URL = "AWS_ENDPOINT_URL"
ENV_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_AWS_DEFAULT_REGION = "AWS_DEFAULT_REGION"
ENV_AWS_REGION = "AWS_REGION"
ENV_AWS_SESSION_TOKEN = "AWS_SESSION_TOKEN"
ENV_AWS_SHARED_CREDENTIALS_FILE = "AWS_SHARED_CREDENTIALS_FILE"  # how credentials reach workers (pipelines/credentials.py)
ENV_AWS_ENDPOINT_URL_S3 = "AWS_ENDPOINT_URL_S3"  # the S3-only endpoint, preferred (as boto3 does) to AWS_ENDPOINT_URL
ENV_AWS_MAX_ATTEMPTS = "AWS_MAX_ATTEMPTS"  # S3 attempts per request, the first included
ENV_AWS_PROFILE = "AWS_PROFILE"
ENV_S3_CONNECT_TIMEOUT = "BFN_S3_CONNECT_TIMEOUT"  # seconds
ENV_BFN_STORAGE = "BFN_STORAGE_PATH"  # Ray Train checkpoints: a local path or s3://bucket/prefix
ENV_BFN_DATA = "BFN_DATA_URL"         # where shards live: a local path or s3://bucket/prefix
ENV_BFN_HOME = "BFN_HOME"             # local state (default ./.bfn)
ENV_BFN_USER = "BFN_USER"             # who promotes, in shared service accounts
# MLflow's HTTP retry settings: bounded by default (tracking.MLFLOW_HTTP_DEFAULTS), forwarded to workers
ENV_MLFLOW_HTTP_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
ENV_MLFLOW_HTTP_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
ENV_MLFLOW_HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"

# How a client reaches Ray. Locally they come from the `bfn stack up` env file; on a cluster the
# user sets them (KubeRay sets the auth pair inside the Ray pods itself, from authOptions).
RAY_CLIENT_ENV_VARS = (ENV_RAY_ADDRESS, ENV_RAY_AUTH_MODE, ENV_RAY_AUTH_TOKEN_PATH)

# What the services need inside every Ray process. On Kubernetes the ConfigMap bfn-env and the
# Secret bfn-credentials (infra/kuberay/) provide exactly these.
SERVICE_ENV_VARS = (
    ENV_MLFLOW_TRACKING_URI,
    ENV_MLFLOW_TRACKING_USERNAME,
    ENV_MLFLOW_TRACKING_PASSWORD,
    ENV_AWS_ENDPOINT_URL,
    ENV_AWS_ACCESS_KEY_ID,
    ENV_AWS_SECRET_ACCESS_KEY,
    ENV_AWS_DEFAULT_REGION,
    ENV_BFN_STORAGE,
    ENV_BFN_DATA,
)

# Values that are credentials: only ever in a Secret (or an env file with mode 0600), never in a
# ConfigMap, an image, a manifest or a log line.
SECRET_ENV_VARS = (ENV_MLFLOW_TRACKING_PASSWORD, ENV_AWS_ACCESS_KEY_ID, ENV_AWS_SECRET_ACCESS_KEY)

# Everything that connects the pieces: what `bfn stack up` writes into its env file (those that
# apply) and what a job's runtime_env forwards to its workers (those that are set).
CONNECTING_ENV_VARS = RAY_CLIENT_ENV_VARS + SERVICE_ENV_VARS

# What travels, where set, to the Ray workers of a local or joined cluster (runtime_env) and to the
# driver and workers of a submitted job: the services' settings without their credentials (Ray logs
# a runtime_env in clear text: credentials travel as a file path, see pipelines/credentials.py), the
# region's other spelling, local state and the promoting user.
# The S3 tuning variables travel too: workers must reach the same endpoint with the same retries.
WORKER_ENV_VARS = tuple(v for v in SERVICE_ENV_VARS if v not in SECRET_ENV_VARS) + (
    ENV_AWS_REGION, ENV_AWS_SHARED_CREDENTIALS_FILE, ENV_AWS_ENDPOINT_URL_S3, ENV_AWS_MAX_ATTEMPTS, ENV_S3_CONNECT_TIMEOUT,
    ENV_BFN_HOME, ENV_BFN_USER, ENV_MLFLOW_HTTP_RETRIES, ENV_MLFLOW_HTTP_BACKOFF, ENV_MLFLOW_HTTP_TIMEOUT)
# Never in a runtime_env: the credentials above and the session token that goes with the AWS keys.
NEVER_FORWARDED_ENV_VARS = SECRET_ENV_VARS + (ENV_AWS_SESSION_TOKEN,)
