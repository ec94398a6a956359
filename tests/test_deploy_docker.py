"""The worker image and docker compose: hadolint (ShellCheck on every RUN) and the contract the
README promises; compose.yaml through the Docker Compose v2 binary's own `config` (schema,
interpolation, merge). Each validator is also shown a broken file, so one that accepts
everything fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomllib
from deploy_fixtures import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKER,
    DOCKERFILE,
    FAKE_ENV,
    LONGEST_BATCH_S,
    ROOT,
    dockerfile_instructions,
    dockerignore_excludes,
    go_duration_seconds,
    run_compose,
    tool,
)

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
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {pkg: setuptools["package-dir"].get(pkg, pkg.replace(".", "/")) for pkg in setuptools["packages"]}
    assert "agile" in folders and len(folders) > 1, "pyproject.toml lists no packages"
    built = ["pyproject.toml", "README.md", "requirements.txt", "adapters/ethos-hate/adapter.json"]
    built += [f"{folder}/__init__.py" for folder in folders.values()]
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



def test_compose_services_wired_for_scale_out(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    assert set(services) == {"redis", "worker", "flower", "producer", "serve"}

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


def test_compose_serves_the_api_beside_the_workers(compose_config: dict[str, Any]) -> None:
    from agile.serve.settings import ServeSettings
    from agile.settings import QueueSettings

    services = compose_config["services"]
    serve, worker = services["serve"], services["worker"]
    assert serve["image"] == worker["image"] and "deploy" not in serve, "the API needs no GPU"
    assert serve["entrypoint"][-1] == "agile" and serve["command"][0] == "serve"
    port = serve["command"][serve["command"].index("--port") + 1]
    assert serve["command"][serve["command"].index("--host") + 1] == "0.0.0.0"
    (published,) = serve["ports"]
    assert published["target"] == int(port) and published["host_ip"] == "127.0.0.1"
    assert f"127.0.0.1:{port}/healthz" in " ".join(serve["healthcheck"]["test"])
    env = serve["environment"]
    assert env["AGILE_REDIS_URL"] == worker["environment"]["AGILE_REDIS_URL"]
    assert env["AGILE_QUEUE"] == worker["environment"]["AGILE_QUEUE"]
    steps = dockerfile_instructions(DOCKERFILE.read_text())
    image_env = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for w, a in steps if w == "ENV")))
    QueueSettings.from_env({**image_env, **env})  # agile accepts every AGILE_* it is given
    settings = ServeSettings.from_env({**image_env, **env})
    assert settings.keys() == set(FAKE_ENV["AGILE_API_KEYS"].split(","))
    assert go_duration_seconds(serve["stop_grace_period"]) > settings.timeout
    assert serve["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_refuses_to_run_the_api_without_keys(tmp_path: Path) -> None:
    result = run_compose([COMPOSE], {k: v for k, v in FAKE_ENV.items() if k != "AGILE_API_KEYS"}, tmp_path)
    assert result.returncode != 0
    assert "AGILE_API_KEYS" in result.stderr


def test_compose_cpu_override_and_remote_redis(tmp_path: Path) -> None:
    result = run_compose([COMPOSE, COMPOSE_CPU], {**FAKE_ENV, "REDIS_HOST": "10.1.2.3"}, tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name in ("worker", "producer", "serve"):
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


