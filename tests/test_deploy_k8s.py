"""Kubernetes manifests: built-in kinds against the Kubernetes OpenAPI schemas bundled by
kubernetes-validate (strict: unknown fields fail), KEDA and prometheus-operator kinds against
the schemas in docker/k8s/schemas/; then the files are checked against each other (queue name,
ports, Secret keys, grace period), since each can be valid alone and wrong together.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_fixtures import (
    COMPOSE,
    DOCKER,
    DOCKERFILE,
    K8S,
    K8S_VERSIONS,
    LONGEST_BATCH_S,
    QUANTITY,
    dockerfile_instructions,
    env_of,
    find,
    go_duration_seconds,
    k8s_documents,
    validate_k8s,
)

from agile.wire import lanes

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
    doc = copy.deepcopy(find(kind, "agile-worker" if kind in ("Deployment", "PodDisruptionBudget") else None))
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
        ("ScaledObject", lambda d: d["spec"]["triggers"][-1]["metadata"].pop("query")),
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
    lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
    assert sorted(lists) == sorted(lanes(env["AGILE_QUEUE"]))  # a bulk job or one HTTP request wakes them
    assert env["AGILE_REDIS_URL"] == {"secretKeyRef": {"name": "agile-redis", "key": "redis-url"}}
    query = triggers["prometheus"]["metadata"]["query"]
    assert query == 'max(sum by (instance) (agile_queue_depth{state=~"queued|in_flight"}))'
    auth = find("TriggerAuthentication", triggers["redis"]["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "agile-redis", "key": "redis-password"}
    ]

    pdb = find("PodDisruptionBudget", "agile-worker")
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


def test_k8s_serves_the_api_beside_the_workers_with_keys_from_a_secret() -> None:
    from agile.serve.settings import ServeSettings
    from agile.settings import QueueSettings

    serve = find("Deployment", "agile-serve")
    pod = serve["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"][-1] == "agile" and container["args"][0] == "serve"
    port = int(container["args"][container["args"].index("--port") + 1])
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = env_of(container)
    worker_env = env_of(find("Deployment", "agile-worker")["spec"]["template"]["spec"]["containers"][0])
    assert env["AGILE_REDIS_URL"] == worker_env["AGILE_REDIS_URL"] and env["AGILE_QUEUE"] == worker_env["AGILE_QUEUE"]
    assert env["AGILE_API_KEYS"] == {"secretKeyRef": {"name": "agile-api-keys", "key": "keys"}}
    plain = {k: v if isinstance(v, str) else "from-a-secret" for k, v in env.items()}
    QueueSettings.from_env({**plain, "AGILE_REDIS_URL": "redis://agile-redis:6379/0"})
    settings = ServeSettings.from_env(plain)
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.timeout
    service = find("Service", "agile-serve")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == serve["spec"]["selector"]["matchLabels"]
    pdb = find("PodDisruptionBudget", "agile-serve")
    assert pdb["spec"]["selector"] == serve["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < serve["spec"]["replicas"]
    readme = (DOCKER / "README.md").read_text()
    assert re.search(r"kubectl -n agile create secret generic agile-api-keys --from-literal=keys=", readme)


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
    workloads = [(d["kind"], d) for _, d in k8s_documents() if d["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == 3
    for kind, doc in workloads:
        pod = doc["spec"]["template"]["spec"]
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
    worker_uid = find("Deployment", "agile-worker")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    image_user = [a for w, a in dockerfile_instructions(DOCKERFILE.read_text()) if w == "USER"][-1]
    assert str(worker_uid) == image_user.split(":")[0]


def test_readme_documents_the_secret_the_manifests_read() -> None:
    readme = (DOCKER / "README.md").read_text()
    command = re.search(r"kubectl -n agile create secret generic agile-redis[^\n]*(?:\\\n[^\n]*)*", readme)
    assert command, "docker/README.md must show how to create the agile-redis Secret"
    assert "--from-literal=redis-password=" in command.group(0)
    assert "--from-literal=redis-url=" in command.group(0)

