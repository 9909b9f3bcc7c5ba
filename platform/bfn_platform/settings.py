"""The constants that tie the code to the infrastructure: image, entry point, ports, env variables.

Everything under infra/ (the container images, the KubeRay manifests, the Ray cluster launcher
config, the MLflow deployment) and everything in the code that starts or reaches a service
(`bfn stack up`, `bfn submit`, the Ray runtime_env of a job) uses these names and numbers.
tests/unit/test_infra.py parses every manifest and fails when one of them drifts from this module
(and this module from pyproject.toml), so change a value here and in infra/ together.

A plain module of constants: it imports nothing, so anything (the CLI's --help included) may
import it for free.

Who sets and who reads each connecting variable (infra/README.md has the whole path):

- RAY_ADDRESS: the `bfn stack up` env file or the user; Ray itself inside a job's driver.
  Read by `bfn` commands (ray.init) and the Ray Jobs client (`bfn submit`).
- RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH: the env file or the user's shell (the token file comes from
  the Secret bfn-ray-auth); KubeRay's authOptions inside the Ray pods. Read by every Ray process
  and client.
- MLFLOW_TRACKING_URI: the env file; ConfigMap bfn-env; the launcher's docker env. Read by rank 0
  of training, evaluation and the model registry commands.
- MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD: Secret bfn-credentials (only for a server
  running the basic-auth app). Read by the MLflow client.
- AWS_ENDPOINT_URL, AWS_DEFAULT_REGION: the env file (local S3 server); ConfigMap bfn-env.
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: the env file; Secret bfn-credentials (or an IAM role).
  Read by boto3 and pyarrow's S3FileSystem.
- BFN_STORAGE_PATH: the env file; ConfigMap bfn-env; a RayJob's runtime_env. Read by training
  (Ray Train RunConfig(storage_path=...)) for configs that name no storage path.
- BFN_DATA_URL: the env file; ConfigMap bfn-env. Where the data commands put and find shards.
"""

# --- the project and its image -------------------------------------------------------------------
PROJECT_NAME = "bfn-platform"
# Must equal [project].version in pyproject.toml (checked by tests/unit/test_infra.py).
PROJECT_VERSION = "0.1.0"

# The platform image (infra/docker/Dockerfile): CUDA PyTorch + Ray + this project, used by the
# KubeRay head and workers, the RayJob submitter and the Ray cluster launcher alike.
IMAGE_NAME = "ghcr.io/bfn-platform/bfn-platform"
# Tag convention: the project version, so an image always matches a release of the code.
IMAGE_TAG = PROJECT_VERSION
IMAGE = f"{IMAGE_NAME}:{IMAGE_TAG}"
# Where the image keeps the repository's configs/ (the working directory of `ray start`).
IMAGE_WORKDIR = "/home/ray/app"
# Non-root user of the image (the Ray base image's `ray` user).
IMAGE_USER = "ray"
IMAGE_UID = 1000

# Versions the image and the cluster are built on. A Ray client must run the same Ray version and
# the same Python minor version as the cluster it talks to.
RAY_VERSION = "2.60.0"
PYTHON_VERSION = "3.11"

# The MLflow tracking server image (infra/mlflow/Dockerfile), tagged with the MLflow version.
MLFLOW_VERSION = "3.17.2"
MLFLOW_IMAGE_NAME = "ghcr.io/bfn-platform/mlflow-server"
MLFLOW_IMAGE = f"{MLFLOW_IMAGE_NAME}:{MLFLOW_VERSION}"

# --- the command line ----------------------------------------------------------------------------
# The console script in pyproject.toml: [project.scripts] bfn = "bfn_platform.cli:main".
CLI_ENTRY_POINT = "bfn"
CLI_TARGET = "bfn_platform.cli:main"

# --- ports ---------------------------------------------------------------------------------------
RAY_GCS_PORT = 6379          # `ray start --head --port`; workers join HEAD:6379
RAY_DASHBOARD_PORT = 8265    # dashboard and Jobs API: `bfn submit --address http://HEAD:8265`
RAY_CLIENT_PORT = 10001      # Ray Client (ray://HEAD:10001)
RAY_WORKER_PORTS = (10002, 19999)  # Ray's default range for its worker processes: no service may sit in it
MLFLOW_PORT = 5000           # MLflow tracking server (REST API, UI, proxied artifacts)
S3_PORT = 9000               # the local S3-compatible server of `bfn stack up`
POSTGRES_PORT = 5432         # MLflow's backend store on a cluster

# --- loopback addresses of the local stack (`bfn stack up`) --------------------------------------
# Both Ray nodes on 127.0.0.1: the only node address for which Ray binds every server (GCS, raylet,
# agents, metrics) to loopback; on 127.0.0.2 and the like they listen on all interfaces.
LOCAL_RAY_NODE_IP = "127.0.0.1"
LOCAL_SERVICE_HOST = "127.0.0.1"  # MLflow, S3 server and the Ray dashboard bind here

# --- environment variables that connect the pieces ------------------------------------------------
# Their names and the lists of them (RAY_CLIENT_ENV_VARS, SERVICE_ENV_VARS, SECRET_ENV_VARS,
# CONNECTING_ENV_VARS, WORKER_ENV_VARS) are spelled once, in pipelines/names.py: the pipelines read
# them too. tests/unit/test_infra.py checks infra/ against them as against this module.

# Server-side settings of the MLflow tracking server (not read by the platform's code).
ENV_MLFLOW_SERVER_ENABLE_JOB_EXECUTION = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"  # "false": one process
MLFLOW_SERVER_ENV_VARS = (
    ENV_MLFLOW_SERVER_ENABLE_JOB_EXECUTION,
    "MLFLOW_SERVER_ALLOWED_HOSTS",       # Host headers accepted (DNS-rebinding protection)
    "MLFLOW_BACKEND_STORE_URI",          # postgresql://... (read from env: never in argv)
    "MLFLOW_AUTH_DATABASE_URI",          # basic-auth user store (infra/mlflow/entrypoint.sh)
    "MLFLOW_AUTH_ADMIN_PASSWORD",        # basic-auth admin bootstrap
    "MLFLOW_FLASK_SERVER_SECRET_KEY",    # basic-auth CSRF/session key
)
# The postgres image's interface (infra/mlflow/postgres.yaml).
POSTGRES_ENV_VARS = ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "PGDATA")

# --- files ---------------------------------------------------------------------------------------
# `bfn stack up` writes `export NAME=value` lines for CONNECTING_ENV_VARS here (under BFN_HOME,
# default ./.bfn); `source .bfn/stack.env` points a shell at the local stack.
STACK_ENV_FILE = "stack.env"

# --- Kubernetes object names (infra/kuberay, infra/mlflow) ----------------------------------------
K8S_NAMESPACE = "bfn"                       # suggested; the manifests name no namespace
K8S_CONFIGMAP = "bfn-env"                   # non-secret SERVICE_ENV_VARS
K8S_CREDENTIALS_SECRET = "bfn-credentials"  # SECRET_ENV_VARS (+ MLflow username)
K8S_RAY_AUTH_SECRET = "bfn-ray-auth"        # Ray token, key RAY_AUTH_TOKEN_SECRET_KEY
RAY_AUTH_TOKEN_SECRET_KEY = "auth_token"    # the key KubeRay's authOptions.secretName expects
RAY_CLUSTER_NAME = "bfn"
RAY_HEAD_SERVICE = f"{RAY_CLUSTER_NAME}-head-svc"  # created by KubeRay for the RayCluster
MLFLOW_SERVICE = "mlflow"
MLFLOW_SERVER_SECRET = "mlflow-server"
POSTGRES_SERVICE = "mlflow-postgres"
