"""infra/ against the code: every manifest and Dockerfile is parsed and checked against
bfn_platform.settings and pyproject.toml, so image names, entry points, ports and env variable
names cannot drift apart. No cluster, registry or Docker daemon is needed.

Each check is a function returning a list of problems; the tests assert the real files have none
and that a deliberately broken copy (wrong port, wrong tag, unknown variable...) has some, so a
check cannot silently pass everything.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from bfn_platform import settings as S

from pipelines import names as N

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

PLACEHOLDER = "REPLACE_ME"
SECRETISH = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN$|^auth_token$")

# Field names of the KubeRay ray.io/v1 API (RayCluster / RayJob), to catch misspelt keys, which
# the API server would silently drop (or reject) only on a real cluster.
RAYCLUSTER_SPEC_KEYS = {
    "headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling", "autoscalerOptions",
    "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "authOptions",
    "upgradeStrategy",
}
HEAD_GROUP_KEYS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template", "resources", "labels"}
WORKER_GROUP_KEYS = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "suspend", "numOfHosts",
    "rayStartParams", "template", "scaleStrategy", "resources", "labels",
}
AUTOSCALER_KEYS = {
    "resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
    "idleTimeoutSeconds", "upscalingMode", "version",
}
AUTH_OPTIONS_KEYS = {"mode", "secretName", "enableK8sTokenAuth"}
RAYJOB_SPEC_KEYS = {
    "activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
    "clusterSelector", "submitterConfig", "managedBy", "deletionPolicy", "deletionStrategy", "entrypoint",
    "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
    "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend",
}


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[tuple[Path, dict]]:
    out = []
    for path in yaml_files():
        for doc in load_all(path):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                out.append((path, doc))
    return out


def the(kind: str, name: str | None = None, objects=None) -> dict:
    found = [d for _, d in (objects or k8s_objects())
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} under infra/, found {len(found)}"
    return found[0]


def launcher() -> dict:
    return load_all(INFRA / "ray-cluster-launcher" / "aws-gpu.yaml")[0]


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_args(instrs) -> dict[str, str]:
    args = {}
    for instr, rest in instrs:
        if instr == "ARG" and "=" in rest:
            k, _, v = rest.partition("=")
            args[k.strip()] = expand(v.strip().strip('"'), args)
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def pod_specs(doc: dict) -> list[dict]:
    """Every pod spec of an object (RayCluster groups, RayJob cluster + submitter, workloads)."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "RayCluster":
        return cluster_pod_specs(spec)
    if kind == "RayJob":
        specs = cluster_pod_specs(spec["rayClusterSpec"]) if "rayClusterSpec" in spec else []
        if "submitterPodTemplate" in spec:
            specs.append(spec["submitterPodTemplate"]["spec"])
        return specs
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [spec["template"]["spec"]]
    return []


def cluster_pod_specs(cluster_spec: dict) -> list[dict]:
    specs = [cluster_spec["headGroupSpec"]["template"]["spec"]]
    specs += [g["template"]["spec"] for g in cluster_spec.get("workerGroupSpecs", [])]
    return specs


def containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("initContainers", [])) + list(pod_spec.get("containers", []))


def data_keys(obj: dict) -> set[str]:
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def container_env_names(container: dict, objects) -> set[str]:
    """Names a container's environment gets: env entries plus the keys of envFrom sources."""
    names = {e["name"] for e in container.get("env", [])}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            names |= data_keys(the("ConfigMap", src["configMapRef"]["name"], objects))
        if "secretRef" in src:
            names |= data_keys(the("Secret", src["secretRef"]["name"], objects))
    return names


def docker_env(run_options: list[str]) -> dict[str, str]:
    env = {}
    for opt in run_options:
        tokens = shlex.split(opt)
        for flag, value in zip(tokens, tokens[1:]):
            if flag in ("-e", "--env"):
                name, _, val = value.partition("=")
                env[name] = val
    return env


def start_flags(command: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"--([\w-]+)(?:=(\S+))?", command)}


def cli_subcommands() -> set[str]:
    from bfn_platform.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


# ----------------------------------------------------------------------------------------------
# checks (each returns a list of problems)
# ----------------------------------------------------------------------------------------------

def image_problems(objects, launcher_cfg) -> list[str]:
    problems = []
    allowed = {S.IMAGE, S.MLFLOW_IMAGE}
    for path, doc in objects:
        for pod in pod_specs(doc):
            for c in containers(pod):
                image = c.get("image", "")
                if image.startswith(S.IMAGE_NAME + ":") and image != S.IMAGE:
                    problems.append(f"{path.name}: {c['name']} uses {image}, not {S.IMAGE}")
                elif image.startswith(S.MLFLOW_IMAGE_NAME + ":") and image != S.MLFLOW_IMAGE:
                    problems.append(f"{path.name}: {c['name']} uses {image}, not {S.MLFLOW_IMAGE}")
                elif doc["kind"] in ("RayCluster", "RayJob") and image != S.IMAGE:
                    problems.append(f"{path.name}: Ray container {c['name']} runs {image!r}, not the platform image")
                elif image not in allowed and not image.startswith("postgres:"):
                    problems.append(f"{path.name}: unexpected image {image!r} in {c['name']}")
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == S.MLFLOW_SERVICE:
            images = {c["image"] for c in doc["spec"]["template"]["spec"]["containers"]}
            if images != {S.MLFLOW_IMAGE}:
                problems.append(f"MLflow Deployment runs {images}, not {S.MLFLOW_IMAGE}")
    image = launcher_cfg.get("docker", {}).get("image")
    if image != S.IMAGE:
        problems.append(f"launcher docker.image is {image!r}, not {S.IMAGE}")
    return problems


def ray_cluster_problems(cluster_spec: dict) -> list[str]:
    """KubeRay schema, ports, autoscaling GPU group, auth, versions of a RayCluster spec."""
    p = []
    if unknown := set(cluster_spec) - RAYCLUSTER_SPEC_KEYS:
        p.append(f"unknown RayCluster spec fields {sorted(unknown)}")
    if cluster_spec.get("rayVersion") != S.RAY_VERSION:
        p.append(f"rayVersion {cluster_spec.get('rayVersion')!r} != {S.RAY_VERSION}")
    if cluster_spec.get("enableInTreeAutoscaling") is not True:
        p.append("enableInTreeAutoscaling must be true")
    if unknown := set(cluster_spec.get("autoscalerOptions", {})) - AUTOSCALER_KEYS:
        p.append(f"unknown autoscalerOptions fields {sorted(unknown)}")
    auth = cluster_spec.get("authOptions", {})
    if set(auth) - AUTH_OPTIONS_KEYS:
        p.append(f"unknown authOptions fields {sorted(set(auth) - AUTH_OPTIONS_KEYS)}")
    if auth.get("mode") != "token" or auth.get("secretName") != S.K8S_RAY_AUTH_SECRET:
        p.append(f"authOptions must be token mode with secretName {S.K8S_RAY_AUTH_SECRET}: {auth}")

    head = cluster_spec.get("headGroupSpec", {})
    if unknown := set(head) - HEAD_GROUP_KEYS:
        p.append(f"unknown headGroupSpec fields {sorted(unknown)}")
    params = head.get("rayStartParams", {})
    want_params = {"port": S.RAY_GCS_PORT, "dashboard-port": S.RAY_DASHBOARD_PORT,
                   "ray-client-server-port": S.RAY_CLIENT_PORT}
    for key, port in want_params.items():
        if params.get(key) != str(port):
            p.append(f"head rayStartParams {key}={params.get(key)!r}, settings say {port}")
    head_container = head["template"]["spec"]["containers"][0]
    ports = {q.get("name"): q.get("containerPort") for q in head_container.get("ports", [])}
    want_ports = {"gcs-server": S.RAY_GCS_PORT, "dashboard": S.RAY_DASHBOARD_PORT, "client": S.RAY_CLIENT_PORT}
    if ports != want_ports:
        p.append(f"head container ports {ports} != {want_ports}")

    groups = cluster_spec.get("workerGroupSpecs", [])
    gpu_groups = []
    for g in groups:
        if unknown := set(g) - WORKER_GROUP_KEYS:
            p.append(f"unknown workerGroupSpecs fields {sorted(unknown)}")
        lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas", g.get("minReplicas"))
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= (n or 0) <= hi and hi > lo):
            p.append(f"group {g.get('groupName')}: replicas {lo} <= {n} <= {hi} with room to scale is required")
        for c in g["template"]["spec"]["containers"]:
            limits = c.get("resources", {}).get("limits", {})
            requests = c.get("resources", {}).get("requests", {})
            if "nvidia.com/gpu" in limits:
                gpu_groups.append(g)
                if not (isinstance(limits["nvidia.com/gpu"], int) and limits["nvidia.com/gpu"] >= 1):
                    p.append(f"group {g['groupName']}: nvidia.com/gpu limit must be a positive integer")
                if requests.get("nvidia.com/gpu", limits["nvidia.com/gpu"]) != limits["nvidia.com/gpu"]:
                    p.append(f"group {g['groupName']}: GPU request must equal the limit")
    if not any(g.get("minReplicas") == 0 for g in gpu_groups):
        p.append("no GPU worker group that scales from zero (minReplicas 0, nvidia.com/gpu limit)")

    for group in [head] + groups:
        for key, value in group.get("rayStartParams", {}).items():
            if not isinstance(value, str):
                p.append(f"rayStartParams {key}: {value!r} must be a string (map[string]string)")
    return p


def env_name_problems(objects, launcher_cfg) -> list[str]:
    """Env names the Ray pods / launcher reference must all be connecting variables; MLflow and
    PostgreSQL may add their own server-side ones (also listed in settings)."""
    p = []
    connecting = set(N.CONNECTING_ENV_VARS)
    server_side = connecting | set(S.MLFLOW_SERVER_ENV_VARS) | set(S.POSTGRES_ENV_VARS)
    for path, doc in objects:
        allowed = connecting if doc["kind"] in ("RayCluster", "RayJob") else server_side
        for pod in pod_specs(doc):
            for c in containers(pod):
                for name in sorted(container_env_names(c, objects) - allowed):
                    p.append(f"{path.name}: {c['name']} references {name}, not in settings")
        if doc["kind"] in ("RayCluster", "RayJob"):
            cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec", {})
            for e in cluster.get("autoscalerOptions", {}).get("env", []):
                if e["name"] not in connecting:
                    p.append(f"{path.name}: autoscaler env {e['name']} not in CONNECTING_ENV_VARS")
        if doc["kind"] == "RayJob" and doc["spec"].get("runtimeEnvYAML"):
            runtime_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"]) or {}
            for name in sorted(set(runtime_env.get("env_vars", {})) - connecting):
                p.append(f"{path.name}: runtimeEnvYAML env_vars {name} not in CONNECTING_ENV_VARS")
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == S.K8S_CONFIGMAP:
            for name in sorted(data_keys(doc) - connecting):
                p.append(f"ConfigMap {S.K8S_CONFIGMAP} holds {name}, not in CONNECTING_ENV_VARS")
    for name in sorted(set(docker_env(launcher_cfg["docker"].get("run_options", []))) - connecting):
        p.append(f"launcher docker -e {name} not in CONNECTING_ENV_VARS")
    return p


def provided_problems(objects) -> list[str]:
    """ConfigMap + credentials Secret provide every service variable; secrets only in the Secret."""
    p = []
    cm = data_keys(the("ConfigMap", S.K8S_CONFIGMAP, objects))
    secret = data_keys(the("Secret", S.K8S_CREDENTIALS_SECRET, objects))
    if missing := set(N.SERVICE_ENV_VARS) - (cm | secret):
        p.append(f"no ConfigMap/Secret provides {sorted(missing)}")
    if leaked := cm & set(N.SECRET_ENV_VARS):
        p.append(f"credentials {sorted(leaked)} in ConfigMap {S.K8S_CONFIGMAP}")
    if missing := set(N.SECRET_ENV_VARS) - secret:
        p.append(f"Secret {S.K8S_CREDENTIALS_SECRET} lacks {sorted(missing)}")
    return p


def launcher_problems(cfg: dict) -> list[str]:
    p = []
    head_cmds = [c for c in cfg.get("head_start_ray_commands", []) if "ray start" in c]
    worker_cmds = [c for c in cfg.get("worker_start_ray_commands", []) if "ray start" in c]
    if len(head_cmds) != 1 or len(worker_cmds) != 1:
        return ["need exactly one `ray start` in head_start_ray_commands and in worker_start_ray_commands"]
    head = start_flags(head_cmds[0])
    want = {"port": S.RAY_GCS_PORT, "dashboard-port": S.RAY_DASHBOARD_PORT, "ray-client-server-port": S.RAY_CLIENT_PORT}
    for flag, port in want.items():
        if head.get(flag) != str(port):
            p.append(f"head `ray start --{flag}={head.get(flag)}`, settings say {port}")
    if "head" not in head or "autoscaling-config" not in head:
        p.append("head command must be `ray start --head --autoscaling-config=...`")
    address = start_flags(worker_cmds[0]).get("address", "")
    if address != f"$RAY_HEAD_IP:{S.RAY_GCS_PORT}":
        p.append(f"workers join {address!r}, not $RAY_HEAD_IP:{S.RAY_GCS_PORT}")

    env = docker_env(cfg["docker"].get("run_options", []))
    if env.get(N.ENV_RAY_AUTH_MODE) != "token":
        p.append("launcher containers must run with RAY_AUTH_MODE=token")
    home = f"/home/{S.IMAGE_USER}"
    mounted = {dst.replace("~", home, 1) for dst in cfg.get("file_mounts", {})}
    if env.get(N.ENV_RAY_AUTH_TOKEN_PATH) not in mounted:
        p.append(f"RAY_AUTH_TOKEN_PATH={env.get(N.ENV_RAY_AUTH_TOKEN_PATH)} is not a file_mounts destination")
    for cmd in head_cmds + worker_cmds:
        for sourced in re.findall(r"(?:^|;|\s)\.\s+(\S+);", cmd):
            if sourced.replace("~", home, 1) not in mounted:
                p.append(f"start command sources {sourced}, which file_mounts does not provide")
    for name in env:
        if name in N.SECRET_ENV_VARS or SECRETISH.search(name):
            p.append(f"credential {name} set in the launcher config")

    nodes = cfg.get("available_node_types", {})
    head_type = nodes.get(cfg.get("head_node_type"), {})
    if head_type.get("resources", {}).get("CPU") != 0:
        p.append("the head node type should declare CPU: 0 (no trials or Train workers on the head)")
    gpu_types = [n for n in nodes.values() if n.get("resources", {}).get("GPU", 0) >= 1]
    if not gpu_types:
        p.append("no GPU worker node type (resources: {GPU: 1})")
    for n in gpu_types:
        if n.get("min_workers", 0) != 0 or not 0 < n.get("max_workers", 0) <= cfg.get("max_workers", 0):
            p.append("GPU workers must scale from 0 up to at most max_workers")
    return p


def mlflow_problems(objects) -> list[str]:
    p = []
    dep = the("Deployment", S.MLFLOW_SERVICE, objects)
    svc = the("Service", S.MLFLOW_SERVICE, objects)
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    args = [str(a) for a in c.get("args", [])]

    def flag(name):
        return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None

    if flag("--port") != str(S.MLFLOW_PORT):
        p.append(f"mlflow server --port {flag('--port')}, settings say {S.MLFLOW_PORT}")
    if flag("--host") != "0.0.0.0":
        p.append("mlflow server must listen on 0.0.0.0 inside its pod")
    if "--serve-artifacts" not in args or not (flag("--artifacts-destination") or "").startswith("s3://"):
        p.append("mlflow server must proxy artifacts (--serve-artifacts) to an s3:// --artifacts-destination")
    if not (flag("--workers") or "").isdigit():
        p.append("mlflow server needs an explicit --workers N")
    if flag("--app-name") != "basic-auth":
        p.append("the shared MLflow server must run --app-name basic-auth")
    if any(a.startswith("--backend-store-uri") for a in args) or any("postgresql://" in a for a in args):
        p.append("the backend store URI (with its password) must come from MLFLOW_BACKEND_STORE_URI, not argv")
    ports = {q["name"]: q["containerPort"] for q in c.get("ports", [])}
    if ports != {"http": S.MLFLOW_PORT}:
        p.append(f"mlflow container ports {ports}")
    svc_ports = svc["spec"]["ports"]
    if [(q["port"], q.get("targetPort")) for q in svc_ports] not in ([(S.MLFLOW_PORT, "http")], [(S.MLFLOW_PORT, S.MLFLOW_PORT)]):
        p.append(f"Service {S.MLFLOW_SERVICE} ports {svc_ports}")
    labels = pod["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
        p.append("the mlflow Service selects no MLflow pod")

    env = {e["name"]: e for e in c.get("env", [])}
    defined = []
    for e in c.get("env", []):  # $(VAR) must name an env var defined before it (Kubernetes rule)
        for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
            if ref not in defined:
                p.append(f"{e['name']} refers to $({ref}) before it is defined")
        defined.append(e["name"])
    if env.get(S.ENV_MLFLOW_SERVER_ENABLE_JOB_EXECUTION, {}).get("value") != "false":
        p.append("MLFLOW_SERVER_ENABLE_JOB_EXECUTION must be 'false'")
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"):
        uri = urlparse(env.get(name, {}).get("value", ""))
        if uri.scheme != "postgresql" or (uri.hostname, uri.port) != (S.POSTGRES_SERVICE, S.POSTGRES_PORT):
            p.append(f"{name} must be postgresql://...@{S.POSTGRES_SERVICE}:{S.POSTGRES_PORT}/...")
    hosts = env.get("MLFLOW_SERVER_ALLOWED_HOSTS", {}).get("value", "").split(",")
    for host in (f"{S.MLFLOW_SERVICE}:{S.MLFLOW_PORT}", f"localhost:{S.MLFLOW_PORT}"):
        if host not in hosts:
            p.append(f"MLFLOW_SERVER_ALLOWED_HOSTS lacks {host}")
    for probe in ("readinessProbe", "livenessProbe"):
        get = c.get(probe, {}).get("httpGet", {})
        if get.get("path") != "/health" or get.get("port") not in ("http", S.MLFLOW_PORT):
            p.append(f"{probe} must GET /health on the server port")

    uri = urlparse(the("ConfigMap", S.K8S_CONFIGMAP, objects)["data"][N.ENV_MLFLOW_TRACKING_URI])
    if (uri.hostname, uri.port) != (S.MLFLOW_SERVICE, S.MLFLOW_PORT):
        p.append(f"ConfigMap MLFLOW_TRACKING_URI points at {uri.hostname}:{uri.port}, "
                 f"the server is Service {S.MLFLOW_SERVICE}:{S.MLFLOW_PORT}")
    return p


def postgres_problems(objects) -> list[str]:
    p = []
    svc = the("Service", S.POSTGRES_SERVICE, objects)
    sts = the("StatefulSet", S.POSTGRES_SERVICE, objects)
    if [q["port"] for q in svc["spec"]["ports"]] != [S.POSTGRES_PORT]:
        p.append(f"Service {S.POSTGRES_SERVICE} ports {svc['spec']['ports']}")
    if sts["spec"]["serviceName"] != S.POSTGRES_SERVICE:
        p.append("StatefulSet serviceName must be its Service")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    if [q["containerPort"] for q in c["ports"]] != [S.POSTGRES_PORT]:
        p.append(f"postgres containerPort {c['ports']}")
    if not sts["spec"].get("volumeClaimTemplates"):
        p.append("postgres needs a PersistentVolumeClaim")
    policy = the("NetworkPolicy", S.POSTGRES_SERVICE, objects)
    mlflow_labels = the("Deployment", S.MLFLOW_SERVICE, objects)["spec"]["template"]["metadata"]["labels"]
    for rule in policy["spec"]["ingress"]:
        if [q["port"] for q in rule["ports"]] != [S.POSTGRES_PORT]:
            p.append(f"NetworkPolicy port {rule['ports']}")
        for peer in rule["from"]:
            if any(mlflow_labels.get(k) != v for k, v in peer["podSelector"]["matchLabels"].items()):
                p.append("NetworkPolicy admits pods other than the MLflow server")
    return p


# ----------------------------------------------------------------------------------------------
# settings, pyproject and the Dockerfiles
# ----------------------------------------------------------------------------------------------

def test_settings_is_a_plain_module_of_constants():
    tree = ast.parse(Path(S.__file__).read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not imports, "settings.py must import nothing (it is imported by --help and by infra tests)"
    assert ast.get_docstring(tree)


def test_settings_agree_with_pyproject():
    from packaging.requirements import Requirement

    project = PYPROJECT["project"]
    assert S.PROJECT_NAME == project["name"]
    assert S.PROJECT_VERSION == project["version"] == S.IMAGE_TAG
    assert S.IMAGE == f"{S.IMAGE_NAME}:{S.IMAGE_TAG}"
    assert project["scripts"][S.CLI_ENTRY_POINT] == S.CLI_TARGET
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    assert deps["ray"].specifier.contains(S.RAY_VERSION), "the image's Ray must satisfy pyproject's ray range"
    assert {"default", "train", "tune"} <= deps["ray"].extras
    assert deps["mlflow"].specifier.contains(S.MLFLOW_VERSION), "the server's MLflow must satisfy the clients' range"
    from packaging.specifiers import SpecifierSet
    assert SpecifierSet(project["requires-python"]).contains(S.PYTHON_VERSION + ".0")


def test_settings_env_var_groups_are_consistent():
    assert len(set(N.CONNECTING_ENV_VARS)) == len(N.CONNECTING_ENV_VARS)
    assert set(N.CONNECTING_ENV_VARS) == set(N.RAY_CLIENT_ENV_VARS) | set(N.SERVICE_ENV_VARS)
    assert set(N.SECRET_ENV_VARS) <= set(N.SERVICE_ENV_VARS)
    names = {getattr(N, n) for n in dir(N) if n.startswith("ENV_")}
    assert set(N.CONNECTING_ENV_VARS) <= names
    for required in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH",
                     "BFN_STORAGE_PATH", "BFN_DATA_URL"):
        assert required in N.CONNECTING_ENV_VARS
    ports = [S.RAY_GCS_PORT, S.RAY_DASHBOARD_PORT, S.RAY_CLIENT_PORT, S.MLFLOW_PORT, S.S3_PORT, S.POSTGRES_PORT]
    assert len(set(ports)) == len(ports)


def test_cli_entry_point_resolves():
    module, _, attr = S.CLI_TARGET.partition(":")
    mod = __import__(module, fromlist=[attr])
    assert callable(getattr(mod, attr))


def test_platform_dockerfile():
    instrs = dockerfile(INFRA / "docker" / "Dockerfile")
    args = dockerfile_args(instrs)
    assert args["RAY_VERSION"] == S.RAY_VERSION
    base = expand(next(rest for i, rest in instrs if i == "FROM"), args)
    assert base == args["BASE_IMAGE"] and base.startswith("rayproject/ray:")
    py_tag = "py" + S.PYTHON_VERSION.replace(".", "")
    assert f":{S.RAY_VERSION}-{py_tag}-" in base, f"base image {base} is not Ray {S.RAY_VERSION} on Python {S.PYTHON_VERSION}"
    assert re.search(r"-(gpu|cu\d+)$", base), "the base must be a CUDA image"

    runs = [expand(rest, args) for i, rest in instrs if i == "RUN"]
    torch_installs = [r for r in runs if "pip install" in r and re.search(r'"?torch==', r) and "--index-url" in r]
    assert torch_installs, "torch must be installed from a PyTorch CUDA index"
    assert re.search(r"--index-url\s+\"?https://download\.pytorch\.org/whl/cu\d+\"?", torch_installs[0])
    project = [r for r in runs if re.search(r"pip install \.(\s|$)", r)]
    assert project, "the image must `pip install .` the project"
    assert f'"ray[default,train,tune]=={S.RAY_VERSION}"' in project[0], "Ray must stay pinned to the cluster's release"
    assert f'"torch=={args["TORCH_VERSION"]}"' in project[0], "the project install must keep the CUDA torch"
    assert any("torch.version.cuda" in r and S.CLI_ENTRY_POINT in r for r in runs), "build-time smoke check"

    users = [rest for i, rest in instrs if i == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == S.IMAGE_UID != 0, "numeric non-root USER (runAsNonRoot needs it)"
    assert [rest for i, rest in instrs if i == "WORKDIR"][-1] == S.IMAGE_WORKDIR
    copies = [rest for i, rest in instrs if i == "COPY"]
    assert any(c.split()[-2:] == ["configs", "./configs"] for c in copies), "configs/ must be in the image"
    assert json.loads([rest for i, rest in instrs if i == "ENTRYPOINT"][-1]) == [], \
        "no ENTRYPOINT: the launcher runs `docker run IMAGE bash`"
    cmd = json.loads([rest for i, rest in instrs if i == "CMD"][-1])
    assert cmd[0] == S.CLI_ENTRY_POINT
    labels = " ".join(rest for i, rest in instrs if i == "LABEL")
    assert f'org.opencontainers.image.version="{S.PROJECT_VERSION}"' in labels
    env_and_args = " ".join(rest for i, rest in instrs if i in ("ENV", "ARG"))
    for name in N.SECRET_ENV_VARS + (N.ENV_RAY_AUTH_TOKEN_PATH,):
        assert name not in env_and_args, f"{name} must not be baked into the image"


def test_platform_dockerignore_is_an_allow_list_with_what_the_build_needs():
    lines = [ln.strip() for ln in (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "*", "start by excluding everything, so .bfn/ and env files never reach the build"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "configs"}
    for where in find["where"]:
        if where == ".":
            needed |= {pat.rstrip("*") for pat in find["include"] if (REPO / pat.rstrip("*")).is_dir()}
        else:
            needed.add(where)
    assert needed <= allowed, f"the build context lacks {sorted(needed - allowed)}"
    assert ".bfn" not in allowed and not any(a.startswith(".") for a in allowed)
    for path in needed:
        assert (REPO / path).exists(), f"{path} is let into the build but does not exist"


def test_mlflow_dockerfile():
    instrs = dockerfile(INFRA / "mlflow" / "Dockerfile")
    args = dockerfile_args(instrs)
    assert args["MLFLOW_VERSION"] == S.MLFLOW_VERSION
    runs = " ".join(expand(rest, args) for i, rest in instrs if i == "RUN")
    assert f'"mlflow[auth]=={S.MLFLOW_VERSION}"' in runs
    assert "psycopg2-binary" in runs and "boto3" in runs
    assert [rest for i, rest in instrs if i == "EXPOSE"] == [str(S.MLFLOW_PORT)]
    uid = [rest for i, rest in instrs if i == "USER"][-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    entry = json.loads([rest for i, rest in instrs if i == "ENTRYPOINT"][-1])
    copied = [rest.split() for i, rest in instrs if i == "COPY"]
    source = next(parts[-2] for parts in copied if parts[-1] == entry[0])
    script = INFRA / "mlflow" / source
    assert script.is_file() and os.access(script, os.X_OK)
    assert "exec mlflow server" in script.read_text()
    cmd = json.loads([rest for i, rest in instrs if i == "CMD"][-1])
    assert cmd[cmd.index("--port") + 1] == str(S.MLFLOW_PORT)


# ----------------------------------------------------------------------------------------------
# the manifests
# ----------------------------------------------------------------------------------------------

def test_every_yaml_file_parses_into_named_objects():
    files = yaml_files()
    assert len(files) >= 8
    for path in files:
        docs = load_all(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            if "kind" in doc:
                assert doc.get("apiVersion") and doc.get("metadata", {}).get("name"), path
                assert "namespace" not in doc["metadata"], f"{path}: name no namespace (kubectl -n chooses it)"


def test_images_are_the_platform_and_mlflow_images_with_the_project_tags():
    assert image_problems(k8s_objects(), launcher()) == []


def test_image_check_catches_a_stale_tag():
    objects = copy.deepcopy(k8s_objects())
    cluster = the("RayCluster", objects=objects)
    cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] = f"{S.IMAGE_NAME}:0.0.9"
    cfg = launcher()
    cfg["docker"]["image"] = "rayproject/ray:2.60.0-py311-gpu"
    problems = image_problems(objects, cfg)
    assert any("0.0.9" in q for q in problems) and any("launcher" in q for q in problems)


def test_raycluster():
    cluster = the("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"] == S.RAY_CLUSTER_NAME
    assert ray_cluster_problems(cluster["spec"]) == []


def test_raycluster_check_catches_wrong_ports_and_fields():
    spec = copy.deepcopy(the("RayCluster")["spec"])
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][1]["containerPort"] = 8266
    spec["headGroupSpec"]["rayStartParams"]["port"] = "6380"
    spec["workerGroupSpec"] = spec.pop("workerGroupSpecs")
    problems = ray_cluster_problems(spec)
    assert any("8266" in q for q in problems)
    assert any("6380" in q for q in problems)
    assert any("workerGroupSpec" in q for q in problems)
    assert any("GPU worker group" in q for q in problems)


def test_rayjob_runs_a_bfn_command_on_the_same_cluster():
    job = the("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert not set(spec) - RAYJOB_SPEC_KEYS, sorted(set(spec) - RAYJOB_SPEC_KEYS)
    assert spec["rayClusterSpec"] == the("RayCluster")["spec"], "rayjob.yaml's cluster drifted from raycluster.yaml"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"

    tokens = shlex.split(spec["entrypoint"])
    assert tokens[0] == S.CLI_ENTRY_POINT, "the entrypoint must be the project's console script"
    assert tokens[1] in cli_subcommands(), f"`bfn {tokens[1]}` is not a command of the CLI"
    configs = [t for t in tokens[2:] if t.endswith((".yaml", ".yml"))]
    assert configs, "the entrypoint should name a config"
    for path in configs:
        assert path.startswith(S.IMAGE_WORKDIR + "/"), f"{path} is not under the image's {S.IMAGE_WORKDIR}"
        rel = path[len(S.IMAGE_WORKDIR) + 1:]
        assert (REPO / rel).is_file(), f"the RayJob runs {rel}, which is not in the repository"
        assert rel.startswith("configs/"), "only configs/ is copied into the image"
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(runtime_env) == {"env_vars"} and runtime_env["env_vars"]


def test_env_variable_names_are_connecting_variables():
    assert env_name_problems(k8s_objects(), launcher()) == []


def test_env_check_catches_an_unknown_variable():
    objects = copy.deepcopy(k8s_objects())
    head = the("RayCluster", objects=objects)["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head.setdefault("env", []).append({"name": "MLFLOW_URI", "value": "http://mlflow:5000"})
    cfg = launcher()
    cfg["docker"]["run_options"].append("-e BFN_DATA=s3://x")
    problems = env_name_problems(objects, cfg)
    assert any("MLFLOW_URI" in q for q in problems) and any("BFN_DATA " in q for q in problems)


def test_configmap_and_secret_provide_every_service_variable():
    objects = k8s_objects()
    assert provided_problems(objects) == []
    for _, doc in objects:
        if doc["kind"] in ("RayCluster", "RayJob"):
            cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
            for pod in cluster_pod_specs(cluster):
                ray_container = pod["containers"][0]
                assert container_env_names(ray_container, objects) >= set(N.SERVICE_ENV_VARS), \
                    f"{doc['kind']} container {ray_container['name']} does not load every service variable"


def test_provided_check_catches_a_missing_or_misplaced_variable():
    objects = copy.deepcopy(k8s_objects())
    cm = the("ConfigMap", S.K8S_CONFIGMAP, objects)
    del cm["data"][N.ENV_BFN_DATA]
    cm["data"][N.ENV_AWS_SECRET_ACCESS_KEY] = "x"
    problems = provided_problems(objects)
    assert any(N.ENV_BFN_DATA in q for q in problems) and any("credentials" in q for q in problems)


def test_every_secret_and_configmap_reference_resolves():
    objects = k8s_objects()
    defined = {(d["kind"], d["metadata"]["name"]): data_keys(d) for _, d in objects if d["kind"] in ("ConfigMap", "Secret")}

    def walk(node):
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    refs = 0
    for path, doc in objects:
        for node in walk(doc):
            for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret"),
                                ("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                if field in node:
                    ref = node[field]
                    refs += 1
                    assert (kind, ref["name"]) in defined, f"{path.name}: {kind} {ref['name']} is defined nowhere in infra/"
                    if "key" in ref:
                        assert ref["key"] in defined[(kind, ref["name"])], f"{path.name}: {ref['name']} has no key {ref['key']}"
            if "configMap" in node and isinstance(node["configMap"], dict) and "name" in node["configMap"]:
                assert ("ConfigMap", node["configMap"]["name"]) in defined
        if doc["kind"] == "RayCluster":
            name = doc["spec"]["authOptions"]["secretName"]
            assert S.RAY_AUTH_TOKEN_SECRET_KEY in defined[("Secret", name)]
    assert refs >= 10


def test_no_credentials_in_manifests_and_only_placeholders_in_examples():
    for path, doc in k8s_objects():
        if doc["kind"] == "Secret":
            assert path.name.endswith(".example.yaml"), f"{path}: real Secrets never live in the repository"
            for key, value in (doc.get("stringData") or {}).items():
                if SECRETISH.search(key) or key in N.SECRET_ENV_VARS:
                    assert value == PLACEHOLDER, f"{path}: {key} must be the placeholder {PLACEHOLDER}"
            assert not doc.get("data"), f"{path}: use stringData placeholders, not encoded data"
        for pod in pod_specs(doc):
            for c in containers(pod):
                for e in c.get("env", []):
                    if e["name"] in N.SECRET_ENV_VARS or SECRETISH.search(e["name"]):
                        assert "secretKeyRef" in e.get("valueFrom", {}), f"{path.name}: {e['name']} must come from a Secret"
    for path in INFRA.rglob("*"):
        if path.is_file():
            assert not re.search(r"AKIA[0-9A-Z]{16}", path.read_text(errors="ignore")), f"{path}: an AWS key id"


def test_pods_run_as_non_root_with_resources():
    for path, doc in k8s_objects():
        ray = doc["kind"] in ("RayCluster", "RayJob")
        for pod in pod_specs(doc):
            ctx = pod.get("securityContext", {})
            assert ctx.get("runAsNonRoot") is True, f"{path.name}: pod must run as non-root"
            if ray:
                assert ctx.get("runAsUser") == S.IMAGE_UID, f"{path.name}: Ray pods run as the image's user"
            for c in containers(pod):
                res = c.get("resources", {})
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(res.get(kind, {})), f"{path.name}: {c['name']} needs {kind}"
                assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, f"{path.name}: {c['name']}"


def test_mlflow_server_deployment():
    assert mlflow_problems(k8s_objects()) == []


def test_mlflow_check_catches_drift():
    objects = copy.deepcopy(k8s_objects())
    c = the("Deployment", S.MLFLOW_SERVICE, objects)["spec"]["template"]["spec"]["containers"][0]
    c["args"][c["args"].index("--port") + 1] = "5001"
    c["args"].remove("--serve-artifacts")
    the("ConfigMap", S.K8S_CONFIGMAP, objects)["data"][N.ENV_MLFLOW_TRACKING_URI] = "http://mlflow-server:5000"
    problems = mlflow_problems(objects)
    assert any("5001" in q for q in problems)
    assert any("--serve-artifacts" in q for q in problems)
    assert any("mlflow-server" in q for q in problems)


def test_postgres_backend_store():
    assert postgres_problems(k8s_objects()) == []


def test_cluster_launcher_passes_rays_schema():
    pytest.importorskip("jsonschema")
    ray_autoscaler = pytest.importorskip("ray.autoscaler")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = launcher()
    schema = json.loads((Path(ray_autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    validate_config(prepare_config(copy.deepcopy(cfg)))  # with the AWS provider's defaults filled in
    assert cfg["provider"]["type"] == "aws"


def test_cluster_launcher_ports_env_and_gpu_workers():
    cfg = launcher()
    assert launcher_problems(cfg) == []
    assert image_problems([], cfg) == []
    env = docker_env(cfg["docker"]["run_options"])
    configmap = the("ConfigMap", S.K8S_CONFIGMAP)["data"]
    assert env[N.ENV_AWS_DEFAULT_REGION] == cfg["provider"]["region"]
    for name in (N.ENV_BFN_STORAGE, N.ENV_BFN_DATA):
        assert env[name] == configmap[name], f"{name} differs between the launcher and the ConfigMap"
    assert urlparse(env[N.ENV_MLFLOW_TRACKING_URI]).port == S.MLFLOW_PORT


def test_cluster_launcher_check_catches_drift():
    cfg = launcher()
    cfg["head_start_ray_commands"] = [c.replace(f"--dashboard-port={S.RAY_DASHBOARD_PORT}", "--dashboard-port=8266")
                                      for c in cfg["head_start_ray_commands"]]
    cfg["worker_start_ray_commands"] = [c.replace(f":{S.RAY_GCS_PORT}", ":6380") for c in cfg["worker_start_ray_commands"]]
    cfg["docker"]["run_options"].append("-e AWS_SECRET_ACCESS_KEY=abc")
    cfg["file_mounts"] = {}
    problems = launcher_problems(cfg)
    assert any("8266" in q for q in problems)
    assert any("6380" in q for q in problems)
    assert any("AWS_SECRET_ACCESS_KEY" in q for q in problems)
    assert any("RAY_AUTH_TOKEN_PATH" in q for q in problems)


def test_readme_covers_the_connecting_variables_and_names():
    text = (INFRA / "README.md").read_text()
    for name in N.CONNECTING_ENV_VARS:
        assert f"`{name}`" in text, f"infra/README.md does not explain {name}"
    for needle in (S.IMAGE, S.MLFLOW_IMAGE, f"svc/{S.RAY_HEAD_SERVICE}", f"svc/{S.MLFLOW_SERVICE}",
                   f".bfn/{S.STACK_ENV_FILE}", f"http://127.0.0.1:{S.RAY_DASHBOARD_PORT}",
                   f"{S.CLI_ENTRY_POINT} submit", "RAY_AUTH_MODE=token"):
        assert needle in text, f"infra/README.md does not mention {needle}"
    # Every command it runs from infra/ names a file that exists.
    for rel in set(re.findall(r"infra/[\w./-]+\.(?:yaml|Dockerfile)|infra/[\w/-]+/Dockerfile", text)):
        assert (REPO / rel).exists(), f"infra/README.md refers to a missing {rel}"
