"""`agile serve` end to end: a real server process, a real worker on the tiny model, a private Redis,
and httpx as the client. Request and response shapes follow Perspective's documented fields.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from celery import Celery
from serve_fixtures import KEYS, analyze, redis_strings, wait_until

from agile.wire import TASK_NAME, lanes

TEXT = "you people are all the same and should leave"


def body(text: str = TEXT, **extra) -> dict:
    return {"comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}, "THREAT": {}}, **extra}


def worker_scores(stack, adapter: str | None, texts: list[str]) -> dict:
    """The worker's own answer through plain Celery, to compare the server's scores with."""
    app = Celery("check", broker=stack["redis"].url, backend=stack["redis"].url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    kwargs = {"items": [{"id": str(n), "text": t} for n, t in enumerate(texts)]}
    kwargs.update({"adapter": adapter} if adapter else {"labels": ["Toxic", "Safe"]})
    result = app.send_task(TASK_NAME, kwargs=kwargs, queue=stack["env"]["AGILE_QUEUE"])
    out = result.get(timeout=60)
    result.forget()
    return out


def test_analyze_answers_in_perspectives_shape_with_each_policys_positive_label(stack):
    r = analyze(stack["server"].url, body(languages=["en"], clientToken="tok-1", spanAnnotations=True))
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"attributeScores", "languages", "trainedLanguages", "clientToken"}
    assert out["languages"] == ["en"] and out["clientToken"] == "tok-1" and out["trainedLanguages"] == ["en"]
    scores = out["attributeScores"]
    assert set(scores) == {"TOXICITY", "THREAT"}
    for attr in scores.values():
        assert attr["summaryScore"]["type"] == "PROBABILITY" and 0 <= attr["summaryScore"]["value"] <= 1
        assert attr["spanScores"] == [{"begin": 0, "end": len(TEXT), "score": attr["summaryScore"]}]
    direct = worker_scores(stack, "tiny-toxic", [TEXT])
    assert direct["positive_label"] == "Toxic" and direct["threshold"] == 0.5
    assert scores["TOXICITY"]["summaryScore"]["value"] == pytest.approx(direct["results"]["0"]["p_Toxic"], abs=1e-6)
    # THREAT is tiny-safe: the same weights, positive label Safe, so its score is the complement.
    assert scores["THREAT"]["summaryScore"]["value"] == pytest.approx(1 - scores["TOXICITY"]["summaryScore"]["value"],
                                                                      abs=1e-5)


def test_the_workers_job_less_result_names_the_positive_label_and_threshold(stack):
    safe = worker_scores(stack, "tiny-safe", [TEXT])
    assert safe["positive_label"] == "Safe" and safe["threshold"] == 0.5
    assert safe["results"]["0"]["flagged"] == (safe["results"]["0"]["p_Safe"] >= 0.5)
    zero_shot = worker_scores(stack, None, [TEXT])
    assert zero_shot["positive_label"] is None and zero_shot["threshold"] is None
    assert "flagged" not in zero_shot["results"]["0"]


def test_an_attribute_whose_adapter_the_workers_lack_is_a_failed_precondition(stack):
    r = analyze(stack["server"].url, {"comment": {"text": TEXT}, "requestedAttributes": {"SEVERE_TOXICITY": {}}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["status"] == "FAILED_PRECONDITION"
    assert "unknown adapter 'tiny-missing'" in r.json()["error"]["message"]


def test_score_threshold_leaves_out_lower_scores_and_languages_default_to_the_trained_ones(stack):
    first = analyze(stack["server"].url, body()).json()["attributeScores"]
    low, high = sorted(first, key=lambda a: first[a]["summaryScore"]["value"])
    cut = (first[low]["summaryScore"]["value"] + first[high]["summaryScore"]["value"]) / 2
    request = {"comment": {"text": TEXT},
               "requestedAttributes": {low: {"scoreThreshold": cut}, high: {"scoreThreshold": cut}}}
    out = analyze(stack["server"].url, request).json()
    assert set(out["attributeScores"]) == {high}
    assert out["languages"] == ["en"] and "clientToken" not in out
    assert "spanScores" not in out["attributeScores"][high]


@pytest.mark.parametrize(("how", "code", "status"), [
    ("none", 403, "PERMISSION_DENIED"),
    ("wrong-query", 400, "INVALID_ARGUMENT"),
    ("wrong-header", 400, "INVALID_ARGUMENT"),
    ("wrong-bearer", 401, "UNAUTHENTICATED"),
    ("query", 200, None), ("header", 200, None), ("bearer", 200, None), ("file-key", 200, None),
])
def test_api_keys_as_google_checks_them(stack, how, code, status):
    key, headers = None, {}
    if how in ("wrong-query", "query", "file-key"):
        key = {"wrong-query": "nope", "query": KEYS[0], "file-key": KEYS[1]}[how]
    elif how in ("wrong-header", "header"):
        headers = {"X-Goog-Api-Key": KEYS[0] if how == "header" else "nope"}
    elif how in ("wrong-bearer", "bearer"):
        headers = {"Authorization": f"Bearer {KEYS[0] if how == 'bearer' else 'nope'}"}
    r = analyze(stack["server"].url, body(), key=key, headers=headers)
    assert r.status_code == code, r.text
    if status:
        assert r.json()["error"]["status"] == status and r.json()["error"]["code"] == code
        assert set(r.json()["error"]) == {"code", "message", "status"}
    for path in ("/v1/score", "/v1alpha1/attributes"):
        method = httpx.get if path.endswith("attributes") else httpx.post
        assert method(f"{stack['server'].url}{path}", timeout=10).status_code == 403


@pytest.mark.parametrize("path", ["/v1alpha1/comments:analyze", "/v1/score"])
@pytest.mark.parametrize("payload", ["{", '{"comment": 5}', ""])
def test_the_key_is_checked_before_the_body_is_read(stack, path, payload):
    """A client without a key hears 403 whatever its body says; a wrong key, the key's 400; a good key,
    the body's 400."""
    url = f"{stack['server'].url}{path}"
    headers = {"Content-Type": "application/json"}
    answers = {None: (403, "missing a valid API key"), "nope": (400, "API key not valid"),
               KEYS[0]: (400, "Invalid JSON payload received")}
    for key, (code, says) in answers.items():
        r = httpx.post(url, content=payload, headers=headers, params={"key": key} if key else None, timeout=10)
        assert r.status_code == code, (key, r.text)
        assert says in r.json()["error"]["message"]


SECRET = "a-very-secret-comment-8c1f"


@pytest.mark.parametrize(("payload", "says"), [
    (body(""), "comment.text: text is empty"),
    (body("   \n"), "comment.text: text is empty"),
    (body(SECRET + "é" * 10_240), f"text is {len(SECRET) + 20_480:,} bytes of UTF-8; the limit is 20,480 bytes"),
    (body(SECRET + "x" * 300_000), f"text is {len(SECRET) + 300_000:,} bytes of UTF-8; the limit is 20,480 bytes"),
    ('{"comment": {"text": "' + SECRET + '\\udc80"}, "requestedAttributes": {"TOXICITY": {}}}', "not valid UTF-8"),
    ({"comment": {"text": SECRET}, "requestedAttributes": {"TOXICITY": {}, "SPAM": {}}}, "Unknown attribute(s) SPAM"),
    ({"comment": {"text": SECRET}, "requestedAttributes": {}}, "'requestedAttributes': Dictionary should have"),
    ('{"comment": {"text": "' + SECRET + '"}, "requestedAttributes": {', "Invalid JSON payload received"),
    ("", "Invalid JSON payload received"),
    ({"comment": {"text": SECRET}, "requestedAttributes": {"TOXICITY": {}}, "colour": 1}, 'Unknown name "colour"'),
    ({"requestedAttributes": {"TOXICITY": {}}}, "'comment' is required"),
    ({"comment": {"text": SECRET}, "requestedAttributes": {"TOXICITY": {"scoreType": "STD_DEV_SCORE"}}},
     "requestedAttributes.TOXICITY.scoreType"),
    ({"comment": {"text": SECRET}, "requestedAttributes": {"TOXICITY": {"scoreThreshold": 2}}}, "scoreThreshold"),
    ({"comment": {"text": 42}, "requestedAttributes": {"TOXICITY": {}}}, "'comment.text'"),
])
def test_every_bad_input_gets_400_in_googles_shape_without_the_text(stack, payload, says):
    r = analyze(stack["server"].url, payload)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert says in error["message"], error["message"]
    assert SECRET not in r.text


S = "\\ud800"  # JSON's escape of an unpaired surrogate: Python decodes it, no UTF-8 reply or log can carry it
GOOD = '"comment": {"text": "hello"}, "requestedAttributes": {"TOXICITY": {}}'


@pytest.mark.parametrize(("path", "payload", "says"), [
    ("/v1alpha1/comments:analyze", '{' + GOOD + ', "clientToken": "tok-' + S + '"}', "'clientToken': "),
    ("/v1alpha1/comments:analyze", '{' + GOOD + ', "languages": ["en", "' + S + '"]}', "'languages.1': "),
    ("/v1alpha1/comments:analyze", '{' + GOOD + ', "sessionId": "' + S + '"}', "'sessionId': "),
    ("/v1alpha1/comments:analyze", '{"comment": {"text": "hi"}, "requestedAttributes": {"' + S + '": {}}}',
     "'requestedAttributes."),
    ("/v1alpha1/comments:analyze", '{' + GOOD + ', "' + S + '": 1}', "'body' holds a string"),
    ("/v1/score", '{"comments": [{"id": "a", "text": "hi"}], "policies": ["' + S + '"]}', "'policies.0': "),
    ("/v1/score", '{"comments": [{"id": "a", "text": "hi"}], "policies": ["tiny-toxic"], "thresholds": {"' + S
     + '": 0.5}}', "'thresholds."),
    ("/v1/score", '{"comments": [{"id": "' + S + '", "text": "hi"}], "policies": ["tiny-toxic"]}', "'comments.0.id'"),
])
def test_an_unpaired_surrogate_outside_the_text_is_a_400_before_anything_is_queued(stack, path, payload, says):
    client = stack["redis"].client()
    before = client.llen(stack["trace"])
    r = httpx.post(f"{stack['server'].url}{path}", content=payload, timeout=60,
                   headers={"Content-Type": "application/json", "X-Goog-Api-Key": KEYS[0]})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and says in error["message"], error["message"]
    assert "not valid UTF-8" in error["message"]
    assert client.llen(stack["trace"]) == before  # refused before any scoring: no task reached the worker


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_not_sent_as_json_is_refused_naming_its_content_type(stack, content_type):
    headers = {"X-Goog-Api-Key": KEYS[0], **({"Content-Type": content_type} if content_type else {})}
    r = httpx.post(f"{stack['server'].url}/v1alpha1/comments:analyze", content=json.dumps(body()), headers=headers,
                   timeout=30)
    assert r.request.headers.get("content-type") == content_type
    assert r.status_code == 400, r.text
    sent = f"Content-Type '{content_type}'" if content_type else "no Content-Type"
    assert r.json()["error"]["message"] == (f"Invalid JSON payload received: the body came with {sent}; "
                                            "expected 'application/json'.")


def test_do_not_store_leaves_nothing_of_the_text_in_redis(stack):
    client = stack["redis"].client()
    text = "do-not-store-" + SECRET
    r = analyze(stack["server"].url, body(text, doNotStore=True))
    assert r.status_code == 200, r.text
    everything = redis_strings(client)  # right after the reply, no waiting
    assert text not in everything
    assert not list(client.scan_iter("celery-task-meta-*")), "a result was left in the backend"
    assert client.hlen("unacked") == 0 and not any(client.llen(q) for q in lanes(stack["env"]["AGILE_QUEUE"]))
    prefix = stack["env"]["AGILE_KEY_PREFIX"]
    assert client.hlen(f"{prefix}:tasks:deliveries") == 0 and not list(client.scan_iter(f"{prefix}:job:*"))
    # Without doNotStore the result is read and forgotten too (the message goes at the worker's ack).
    analyze(stack["server"].url, body("stored? " + SECRET))
    assert wait_until(lambda: SECRET not in redis_strings(client), 5)
    assert not list(client.scan_iter("celery-task-meta-*"))


def test_do_not_store_batches_under_two_policies_all_answer(stack):
    """While one result waits for its worker's acknowledgement, the others are still read."""
    with httpx.Client(timeout=15) as http:
        for i in range(20):
            reply = http.post(f"{stack['server'].url}/v1/score", params={"key": KEYS[0]},
                              json={"comments": [{"id": "a", "text": f"request {i}"}],
                                    "policies": ["tiny-toxic", "tiny-safe"], "doNotStore": True})
            assert reply.status_code == 200, reply.text


def test_concurrent_requests_are_coalesced_into_fewer_tasks(stack):
    client = stack["redis"].client()
    before = client.llen(stack["trace"])
    n = 24

    async def many():
        async with httpx.AsyncClient(timeout=60) as http:
            requests = [http.post(f"{stack['server'].url}/v1alpha1/comments:analyze", params={"key": KEYS[0]},
                                  json={"comment": {"text": f"comment {i}"}, "requestedAttributes": {"TOXICITY": {}}})
                        for i in range(n)]
            return await asyncio.gather(*requests)

    replies = asyncio.run(many())
    assert [r.status_code for r in replies] == [200] * n
    values = [r.json()["attributeScores"]["TOXICITY"]["summaryScore"]["value"] for r in replies]
    tasks = client.llen(stack["trace"]) - before
    assert 1 <= tasks < n / 2, f"{n} concurrent requests became {tasks} tasks"
    direct = worker_scores(stack, "tiny-toxic", [f"comment {i}" for i in range(n)])
    assert values == pytest.approx([direct["results"][str(i)]["p_Toxic"] for i in range(n)], abs=1e-6)


def test_native_batch_keeps_ids_and_order_and_marks_bad_rows(stack):
    comments = [{"id": "0012", "text": "first"}, {"id": "b", "text": ""}, {"id": "12", "text": "third one"},
                {"id": "long", "text": "x" * 30_000}, {"id": "huge", "text": "x" * 300_000}]
    r = httpx.post(f"{stack['server'].url}/v1/score", headers={"X-Goog-Api-Key": KEYS[0]}, timeout=60,
                   json={"comments": comments, "policies": ["tiny-toxic", "tiny-safe"]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == ["0012", "b", "12", "long", "huge"]
    assert results[1] == {"id": "b", "error": "text is empty"}
    assert results[3]["error"] == "text is 30,000 bytes of UTF-8; the limit is 20,480 bytes"
    assert results[4]["error"] == "text is 300,000 bytes of UTF-8; the limit is 20,480 bytes"  # not the workers'
    for x in (results[0], results[2]):
        toxic, safe = x["scores"]["tiny-toxic"], x["scores"]["tiny-safe"]
        assert toxic["label"] == "Toxic" and safe["label"] == "Safe" and len(toxic["version"]) == 12
        assert toxic["probability"] + safe["probability"] == pytest.approx(1, abs=1e-5)
        assert toxic["flagged"] == (toxic["probability"] >= toxic["threshold"])
    assert r.json()["model"]
    for bad, says in [({"comments": [{"id": "a", "text": "x"}] * 2, "policies": ["tiny-toxic"]}, "appears twice"),
                      ({"comments": [{"id": "a", "text": "x"}], "policies": ["ethos-hate"]}, "policies must be"),
                      ({"comments": [], "policies": ["tiny-toxic"]}, "'comments'")]:
        r = httpx.post(f"{stack['server'].url}/v1/score", params={"key": KEYS[0]}, json=bad, timeout=30)
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text


def test_a_request_may_flag_at_its_own_threshold(stack):
    url = f"{stack['server'].url}/v1/score"
    comments = [{"id": str(i), "text": f"comment number {i}"} for i in range(6)]
    plain = httpx.post(url, params={"key": KEYS[0]}, json={"comments": comments, "policies": ["tiny-toxic"]},
                       timeout=60).json()["results"]
    probs = sorted(x["scores"]["tiny-toxic"]["probability"] for x in plain)
    cut = (probs[2] + probs[3]) / 2  # half the comments above it, whatever the adapter's own threshold
    r = httpx.post(url, params={"key": KEYS[0]}, timeout=60, json={
        "comments": comments, "policies": ["tiny-toxic", "tiny-safe"], "thresholds": {"tiny-toxic": cut}})
    assert r.status_code == 200, r.text
    for before, after in zip(plain, r.json()["results"], strict=True):
        toxic = after["scores"]["tiny-toxic"]
        assert toxic["probability"] == before["scores"]["tiny-toxic"]["probability"]  # the score is unchanged
        assert toxic["threshold"] == cut and toxic["flagged"] == (toxic["probability"] >= cut)
        assert after["scores"]["tiny-safe"]["threshold"] == 0.5  # the other policy keeps its own
    assert sum(x["scores"]["tiny-toxic"]["flagged"] for x in r.json()["results"]) == 3
    for bad, says in [({"tiny-safe": 0.2}, "not among this request's policies"), ({"tiny-toxic": 1.5}, "thresholds")]:
        r = httpx.post(url, params={"key": KEYS[0]}, timeout=30,
                       json={"comments": comments, "policies": ["tiny-toxic"], "thresholds": bad})
        assert r.status_code == 400 and says in r.json()["error"]["message"], r.text


def test_health_metrics_openapi_and_attributes(stack):
    url = stack["server"].url
    health = httpx.get(f"{url}/healthz", timeout=10).json()
    assert health["status"] == "ok" and health["queued"] >= 0
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    assert {"/v1alpha1/comments:analyze", "/v1/score", "/healthz"} <= set(spec["paths"])
    assert {"APIKeyQuery", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    attrs = httpx.get(f"{url}/v1alpha1/attributes", params={"key": KEYS[0]}, timeout=10).json()
    assert attrs["attributes"]["THREAT"] == "tiny-safe"
    analyze(url, body())
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert re.search(r'^agile_serve_requests_total\{code="200",route="/v1alpha1/comments:analyze"\} [1-9]', text, re.M)
    assert re.search(r'^agile_serve_tasks_total\{policy="tiny-toxic"\} [1-9]', text, re.M)
    assert "agile_serve_request_seconds_bucket" in text
    missing = httpx.get(f"{url}/nowhere", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"


def test_the_server_log_holds_no_key_and_no_comment_text(stack):
    analyze(stack["server"].url, body(SECRET))
    log = stack["server"].text()
    assert "/v1alpha1/comments:analyze 200" in log  # it does log requests
    for secret in (*KEYS, SECRET, TEXT):
        assert secret not in log
    assert SECRET not in stack["worker"].text()
