"""The queue contract: payload validation, result shape, key layout, settings; no Redis needed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from agile.decision import score_fields
from agile.settings import QueueSettings, SettingsError, mask_url
from agile.wire import MAX_ITEMS, MAX_TEXT_CHARS, BatchRequest, JobKeys, PayloadError


def request(**kwargs) -> BatchRequest:
    return BatchRequest.from_task((), kwargs)


def test_a_good_payload_round_trips():
    req = request(items=[{"id": "a", "text": "hi"}, {"id": 7, "text": "there"}], job_id="j1", batch_id="b0",
                  adapter="ethos-hate")
    assert req.ids == ["a", "7"] and req.texts == ["hi", "there"]
    assert req.problems == {}
    assert BatchRequest.from_task((), req.to_kwargs()).to_kwargs() == req.to_kwargs()
    assert req.batch_key == "j1/b0"


def test_texts_alone_are_a_batch_whose_ids_are_positions():
    req = request(texts=["hi", "there", "  "], job_id="j1", batch_id="b0", adapter="ethos-hate")
    assert req.ids is None and [req.id_of(i) for i in range(len(req))] == ["0", "1", "2"]
    assert req.problems == {2: "text is empty"}
    assert req.to_kwargs()["texts"] == ["hi", "there", ""] and "items" not in req.to_kwargs()


@pytest.mark.parametrize("kwargs, says", [
    ({}, "payload needs 'items'"),
    ({"items": [{"id": "a", "text": "x"}], "texts": ["x"]}, "one of them"),
    ({"texts": "x"}, "texts must be a non-empty list"),
    ({"texts": ["x"] * (MAX_ITEMS + 1)}, "texts has 1025 entries"),
    ({"items": "text"}, "items must be a non-empty list"),
    ({"items": []}, "items must be a non-empty list"),
    ({"items": [{"text": "no id"}]}, "items[0] must be an object with 'id'"),
    ({"items": [{"id": None, "text": "x"}]}, "items[0].id must be"),
    ({"items": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "'a' appears twice"),
    ({"items": [{"id": "a", "text": "x"}], "itemz": 1}, "unknown payload key(s) ['itemz']"),
    ({"items": [{"id": "a", "text": "x"}], "job_id": "j"}, "job_id and batch_id must be given together"),
    ({"items": [{"id": "a", "text": "x"}], "job_id": "../x", "batch_id": "b"}, "job_id must be"),
    ({"items": [{"id": "a", "text": "x"}], "adapter": "ethos-hate", "labels": ["A", "B"]}, "zero-shot"),
    ({"items": [{"id": "a", "text": "x"}], "labels": ["A"]}, "at least two strings"),
    ({"items": [{"id": str(i), "text": "x"} for i in range(MAX_ITEMS + 1)]}, "limit is 1024"),
])
def test_a_malformed_payload_names_what_is_wrong(kwargs, says):
    with pytest.raises(PayloadError) as err:
        request(**kwargs)
    assert says in str(err.value)


def test_positional_arguments_are_refused_with_the_right_call():
    with pytest.raises(PayloadError, match="keyword arguments only"):
        BatchRequest.from_task(([{"id": "a", "text": "x"}],), {})


def test_bad_texts_become_per_item_problems():
    req = request(items=[
        {"id": "ok", "text": "fine"}, {"id": "empty", "text": "  "}, {"id": "huge", "text": "x" * (MAX_TEXT_CHARS + 1)},
        {"id": "surrogate", "text": "bad \udc80 byte"}, {"id": "number", "text": 5}, {"id": "none"},
    ])
    problems = {req.ids[i]: why for i, why in req.problems.items()}
    assert set(problems) == {"empty", "huge", "surrogate", "number", "none"}
    assert problems["empty"] == "text is empty"
    assert "200,001 characters" in problems["huge"]
    assert "not valid UTF-8" in problems["surrogate"] and "character 4" in problems["surrogate"]
    assert "got int" in problems["number"]
    assert problems["none"] == "item has no 'text'"
    assert [req.texts[i] for i in req.problems] == [""] * 5 and req.texts[0] == "fine"


@pytest.mark.parametrize("bad", ["", " \n\t ", "x" * (MAX_TEXT_CHARS + 1), "a \udc80", None, 3])
def test_the_batch_check_finds_one_bad_text_among_good_ones(bad):
    texts = ["fine"] * 300
    texts[157] = bad
    req = request(texts=texts)
    assert list(req.problems) == [157]


def test_prediction_follows_the_adapter_threshold_or_the_most_probable_label():
    flagged, kept = score_fields(["Hate", "Fine"], [[0.4, 0.6], [0.4, 0.6]], [False, True], "Hate", 0.3)
    assert flagged == {"p_Hate": 0.4, "p_Fine": 0.6, "prediction": "Hate", "flagged": True, "truncated": False}
    assert kept["truncated"] is True
    assert score_fields(["Hate", "Fine"], [[0.4, 0.6]], [True], "Hate", 0.5)[0]["prediction"] == "Fine"
    assert score_fields(["A", "B", "C"], [[0.2, 0.5, 0.3]], [False], None, 0.5)[0]["prediction"] == "B"
    observed = score_fields(["Hate", "Fine"], [[0.9, 0.1]], [False], "Hate", 0.3, observe=True)[0]
    assert observed == {"p_Hate": 0.9, "p_Fine": 0.1, "prediction": "", "flagged": False, "truncated": False}
    with pytest.raises(ValueError, match="NaN"):
        score_fields(["A", "B"], [[0.5, 0.5], [float("nan"), 0.5]], [False, False], "A", 0.5)


@pytest.mark.parametrize("positive", [None, "B"])
def test_the_batch_rule_is_the_one_comment_rule_on_every_row(positive):
    """The vectorised rule against the rule written out for one comment, on 500 random rows of 3 labels."""
    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=500)
    cut = rng.random(500) < 0.2
    labels = ["A", "B", "C"]
    for p, t, got in zip(probs, cut, score_fields(labels, probs, cut, positive, 0.4), strict=True):
        want = {f"p_{label}": round(float(x), 6) for label, x in zip(labels, p, strict=True)}
        if positive:
            flagged = bool(p[1] >= 0.4)
            want["prediction"] = "B" if flagged else max((p[0], "A"), (p[2], "C"))[1]
            want["flagged"] = flagged
        else:
            want["prediction"] = labels[int(np.argmax(p))]
        want["truncated"] = bool(t)
        assert got == want and list(got) == list(want)


def test_job_keys_share_one_cluster_slot_and_prefix():
    keys = JobKeys("agile", "j1")
    assert all(k.startswith("agile:job:{j1}:") for k in keys.all())
    assert len(set(keys.all())) == len(keys.all())


def test_settings_come_from_the_environment_and_unknown_keys_fail():
    s = QueueSettings.from_env({"AGILE_QUEUE": "q", "AGILE_VISIBILITY_TIMEOUT": "30", "AGILE_HOME": "/x"})
    assert (s.queue, s.visibility_timeout) == ("q", 30)
    assert QueueSettings.from_env({"AGILE_QUEUE": "q"}, queue="flag").queue == "flag"
    with pytest.raises(SettingsError, match="AGILE_VISIBLITY_TIMEOUT"):
        QueueSettings.from_env({"AGILE_VISIBLITY_TIMEOUT": "30"})
    with pytest.raises(SettingsError, match="AGILE_MAX_DELIVERIES='three' is not a valid int"):
        QueueSettings.from_env({"AGILE_MAX_DELIVERIES": "three"})
    with pytest.raises(SettingsError, match="must be redis://"):
        QueueSettings.from_env({"AGILE_REDIS_URL": "http://x"})
    assert QueueSettings.from_env({"AGILE_TASKS_IN_HAND": "2"}).tasks_in_hand == 2
    with pytest.raises(SettingsError, match=r"AGILE_TASKS_IN_HAND must be 0 .* to 4, got 9"):
        QueueSettings.from_env({"AGILE_TASKS_IN_HAND": "9"})


def test_a_worker_holds_one_batch_on_a_cpu_unless_told_and_threads_share_the_model_for_more():
    import torch

    from agile.worker.app import pool

    gpu = torch.cuda.is_available()
    assert pool(QueueSettings()) == ({"worker_pool": "threads", "worker_concurrency": 2} if gpu else
                                     {"worker_pool": "solo", "worker_concurrency": 1})
    assert pool(QueueSettings(tasks_in_hand=1)) == {"worker_pool": "solo", "worker_concurrency": 1}
    assert pool(QueueSettings(), detect=False) == {"worker_pool": "solo", "worker_concurrency": 1}
    assert pool(QueueSettings(tasks_in_hand=2)) == {"worker_pool": "threads", "worker_concurrency": 2}


def test_passwords_are_masked_and_tls_verifies_certificates():
    assert mask_url("redis://:s3cret@host:6380/1") == "redis://:***@host:6380/1"
    assert mask_url("rediss://user:s3cret@host/0") == "rediss://user:***@host/0"
    assert mask_url("redis://host:6379/0") == "redis://host:6379/0"
    config = QueueSettings(redis_url="rediss://:pw@host:6380/0").celery_config()
    import ssl

    assert config["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert config["redis_backend_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_celery_settings_are_the_reliable_ones():
    config = QueueSettings(visibility_timeout=120).celery_config()
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["worker_pool"] == "solo"
    assert config["broker_transport_options"]["visibility_timeout"] == 120
    assert config["broker_transport_options"]["unacked_restore_interval"] <= 120 / 4


def test_the_worker_app_s_config_does_not_import_torch():
    """`celery -A agile.worker inspect ping` is the workers' health probe: reading the app's config must stay
    light (`agile worker` asks torch for a GPU, the config does not)."""
    code = ("import sys; from agile.worker.app import app; app.conf.broker_url; app.conf.worker_pool;"
            "assert 'torch' not in sys.modules, 'torch imported'; print(app.conf.worker_pool)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "solo"


def test_the_producer_side_imports_neither_torch_nor_keras():
    # `agile moderate` runs through the whole command line: building it must stay light too.
    code = ("import sys, agile.wire, agile.settings, agile.broker, agile.decision, agile.producer.client,"
            "agile.producer.cli, agile.producer.commands, agile.worker.cli;"
            "import agile.cli.main; agile.cli.main.build_parser();"
            "bad = [m for m in ('torch', 'keras') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
