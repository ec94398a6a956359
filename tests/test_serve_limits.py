"""`agile serve` when things go wrong: no keys, bad settings, a full queue, no worker, Redis down,
a body over the cap, a broken worker's result.

A server whose queue has no worker, on its own Redis: the first request waits out its
deadline (504) while its task sits in the queue, which is then over the bound (429). A request
that would queue anything therefore shows it as a task in the queue, or a 504.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
from queue_fixtures import ROOT, queue_env, wait_for
from serve_fixtures import KEYS, Server, analyze, serve_env

from agile.serve.attributes import AttributeMap
from agile.serve.settings import ServeSettings, env_name
from agile.settings import SERVE_KEYS, QueueSettings, SettingsError
from agile.wire import lanes

BODY = {"comment": {"text": "hello there"}, "requestedAttributes": {"TOXICITY": {}}}
CAP = 1_000_000  # the idle server's AGILE_SERVE_MAX_BODY_BYTES


def serve_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agile.cli.main", "serve", "--port", "1", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def idle(module_processes, tmp_path_factory):
    """A server on a queue nobody consumes: 1 waiting task fills it, 1.5 s is its deadline."""
    work = tmp_path_factory.mktemp("idle")
    redis = module_processes.redis()
    env = serve_env(queue_env(redis.url, work / "no-model"), work, max_queue=1, timeout=1.5, coalesce_ms=1,
                    max_body_bytes=CAP)
    server = Server(env, work).start()
    module_processes.started.append(server)
    return {"server": server.wait_ready(), "redis": redis, "env": env}


def test_the_server_refuses_to_start_without_keys_unless_open_on_purpose(tmp_path):
    base = queue_env("redis://127.0.0.1:1/0", tmp_path)
    refused = serve_cli(base)
    assert refused.returncode == 2 and "no API keys" in refused.stderr and "--open" in refused.stderr
    both = serve_cli({**base, "AGILE_API_KEYS": "k"}, "--open")
    assert both.returncode == 2 and "choose one" in both.stderr
    typo = serve_cli({**base, "AGILE_SERVE_PROT": "80", "AGILE_API_KEYS": "k"})
    assert typo.returncode == 2 and "unknown setting(s) AGILE_SERVE_PROT" in typo.stderr
    missing = serve_cli({**base, "AGILE_API_KEYS_FILE": str(tmp_path / "none.txt")})
    assert missing.returncode == 2 and "AGILE_API_KEYS_FILE" in missing.stderr
    bad_map = tmp_path / "map.json"
    bad_map.write_text('{"attributes": {"TOXICITY": "../etc"}}')
    mapped = serve_cli({**base, "AGILE_API_KEYS": "k"}, "--attributes", str(bad_map))
    assert mapped.returncode == 2 and "not a plain adapter name" in mapped.stderr


def test_open_on_purpose_serves_without_a_key(module_processes, tmp_path):
    redis = module_processes.redis()
    server = Server(queue_env(redis.url, tmp_path), tmp_path, ("--open",)).start()
    module_processes.started.append(server)
    server.wait_ready()
    r = httpx.get(f"{server.url}/v1alpha1/attributes", timeout=10)
    assert r.status_code == 200 and r.json()["attributes"] == AttributeMap.load(None).attributes
    assert "WITHOUT API keys" in server.text()


def _score_body(comments: int, chars: int) -> bytes:
    return json.dumps({"comments": [{"id": str(i), "text": "x" * chars} for i in range(comments)],
                       "policies": ["tiny-toxic"]}).encode()


def test_a_body_over_the_cap_is_413_before_it_is_read_with_or_without_content_length(idle):
    url, queue = idle["server"].url, lanes(idle["env"]["AGILE_QUEUE"])[0]
    over = _score_body(60, 20_000)  # valid comments: read, they would be queued
    assert len(over) > CAP
    chunked = (over[i:i + 65_536] for i in range(0, len(over), 65_536))
    for content in (over, chunked):
        r = httpx.post(f"{url}/v1/score", content=content, timeout=30,
                       headers={"Content-Type": "application/json", "X-Goog-Api-Key": KEYS[0]})
        assert r.status_code == 413, r.text[:300]
        assert r.json()["error"] == {"code": 413, "status": "INVALID_ARGUMENT",
                                     "message": f"Request payload size exceeds the limit: {CAP:,} bytes."}
        assert ("content-length" in r.request.headers) == (content is over)  # the chunked one had none
    assert idle["redis"].client().llen(queue) == 0
    no_key = httpx.post(f"{url}/v1/score", content=over, headers={"Content-Type": "application/json"}, timeout=30)
    assert no_key.status_code == 403  # the key first, whatever the body, as for a malformed one
    under = _score_body(40, 20_481)  # under the cap: read, and each comment is over the text limit
    assert len(under) < CAP
    r = httpx.post(f"{url}/v1/score", content=under, timeout=30,
                   headers={"Content-Type": "application/json", "X-Goog-Api-Key": KEYS[0]})
    assert r.status_code == 200, r.text[:300]
    assert {x["error"] for x in r.json()["results"]} == {"text is 20,481 bytes of UTF-8; the limit is 20,480 bytes"}
    assert "POST /v1/score 413" in idle["server"].text()
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert re.search(r'^agile_serve_requests_total\{code="413",route="/v1/score"\} 2\.0$', metrics, re.M), metrics


def test_an_unhandled_error_is_a_500_in_googles_shape_logged_and_counted(idle):
    """The test plays a broken worker whose result lacks the p_<label> the server reads: an error no
    handler expects, answered by Starlette's outermost middleware, still goes to the log and metrics."""
    url, client, queue = idle["server"].url, idle["redis"].client(), lanes(idle["env"]["AGILE_QUEUE"])[0]
    secret = "unhandled-secret-comment-5d2e"
    got: dict = {}
    asking = threading.Thread(target=lambda: got.setdefault("r", analyze(url, {**BODY, "comment": {"text": secret}})))
    asking.start()
    _, raw = client.brpop(queue, timeout=10)
    result = {"positive_label": "Toxic", "threshold": 0.5, "results": {"0": {"flagged": True}}}
    client.set(f"celery-task-meta-{json.loads(raw)['headers']['id']}", json.dumps({"status": "SUCCESS",
                                                                                  "result": result}))
    asking.join(30)
    r = got["r"]
    assert r.status_code == 500 and r.json()["error"]["status"] == "INTERNAL", r.text
    assert "KeyError" in r.json()["error"]["message"]
    log = idle["server"].text()
    assert "POST /v1alpha1/comments:analyze 500" in log
    for never in (*KEYS, secret):
        assert never not in log
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert re.search(r'^agile_serve_requests_total\{code="500",route="/v1alpha1/comments:analyze"\} 1\.0$',
                     metrics, re.M), metrics


def test_a_full_queue_answers_429_and_a_late_score_504(idle):
    url = idle["server"].url
    slow: dict = {}
    waiting = threading.Thread(target=lambda: slow.setdefault("r", analyze(url, BODY)))
    start = time.monotonic()
    waiting.start()
    queue = lanes(idle["env"]["AGILE_QUEUE"])[0]
    wait_for(lambda: idle["redis"].client().llen(queue) >= 1, 10, "the first task in the queue")
    time.sleep(0.05)  # past the server's 20 ms cache of the queue depth
    full = analyze(url, BODY)
    assert full.status_code == 429 and full.headers["Retry-After"] == "1"
    assert full.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    waiting.join(30)
    late = slow["r"]
    assert late.status_code == 504 and late.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    assert 1.4 < time.monotonic() - start < 10


def test_redis_down_answers_503_not_a_hang(idle):
    idle["redis"].kill()
    url = idle["server"].url
    for call in (lambda: analyze(url, BODY), lambda: httpx.get(f"{url}/healthz", timeout=60)):
        start = time.monotonic()
        r = call()
        assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE", r.text
        assert time.monotonic() - start < 10


def test_importing_the_server_loads_no_model_stack():
    code = ("import sys, agile.serve.app, agile.serve.cli; "
            "bad = [m for m in ('torch', 'keras', 'keras_hub', 'tensorflow') if m in sys.modules]; "
            "sys.exit(f'imported {bad}' if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_serve_settings_are_typed_and_registered_with_the_queue_settings(tmp_path):
    from dataclasses import fields

    assert {env_name(f.name) for f in fields(ServeSettings)} == SERVE_KEYS
    s = ServeSettings.from_env({"AGILE_SERVE_PORT": "9000", "AGILE_SERVE_OPEN": "yes", "AGILE_API_KEYS": "a, b,,"})
    assert s.port == 9000 and s.open is True and s.keys() == {"a", "b"}
    QueueSettings.from_env({k: "1" for k in SERVE_KEYS if "PORT" not in k})  # the workers accept them
    for env, says in [({"AGILE_SERVE_OPEN": "maybe"}, "AGILE_SERVE_OPEN"),
                      ({"AGILE_SERVE_MAX_BATCH": "5000"}, "1..1024"),
                      ({"AGILE_SERVE_TIMEOUT": "soon"}, "not a valid float"), ({"AGILE_SERVE_PORT": "0"}, "port"),
                      ({"AGILE_SERVE_MAX_BODY_BYTES": "20000"}, "MAX_BODY_BYTES must be at least")]:
        with pytest.raises(SettingsError, match=says):
            ServeSettings.from_env(env)
    assert AttributeMap.load(None).policies == ["ethos-hate", "ethos-violence"]
    assert KEYS[0] != KEYS[1]
