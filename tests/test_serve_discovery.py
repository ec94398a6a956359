"""Perspective's own Python sample, unchanged but for its discovery URL, against a real `agile serve`,
a real worker and a private Redis: `googleapiclient.discovery.build` reads our discovery document and
its `comments().analyze(...)` call gets the worker's scores, and Google's errors where it should."""

from __future__ import annotations

import httpx
import pytest
from googleapiclient import discovery
from googleapiclient.errors import HttpError
from serve_fixtures import KEYS, analyze

TEXT = "you people are all the same and should leave"


def client(url: str, key: str):
    """Perspective's documented Python setup, with our address in place of commentanalyzer.googleapis.com."""
    return discovery.build("commentanalyzer", "v1alpha1", developerKey=key, static_discovery=False,
                           discoveryServiceUrl=f"{url}/$discovery/rest?version=v1alpha1", cache_discovery=False)


def test_perspectives_python_client_scores_through_the_discovery_document(stack):
    url = stack["server"].url
    request = {"comment": {"text": TEXT}, "requestedAttributes": {"TOXICITY": {}, "THREAT": {}},
               "languages": ["en"], "clientToken": "sample-1"}
    response = client(url, KEYS[0]).comments().analyze(body=request).execute()
    same = analyze(url, request).json()  # the plain HTTP answer to the same request
    assert response == same
    assert response["clientToken"] == "sample-1"
    assert set(response["attributeScores"]) == {"TOXICITY", "THREAT"}
    assert 0 <= response["attributeScores"]["TOXICITY"]["summaryScore"]["value"] <= 1


def test_the_client_hears_googles_errors(stack):
    perspective = client(stack["server"].url, "not-a-key")
    with pytest.raises(HttpError) as caught:
        perspective.comments().analyze(body={"comment": {"text": TEXT},
                                             "requestedAttributes": {"TOXICITY": {}}}).execute()
    assert caught.value.resp.status == 400 and "API key not valid" in caught.value.reason
    with pytest.raises(HttpError) as caught:
        client(stack["server"].url, KEYS[0]).comments().analyze(
            body={"comment": {"text": TEXT}, "requestedAttributes": {"SPAM": {}}}).execute()
    assert caught.value.resp.status == 400 and "Unknown attribute(s) SPAM" in caught.value.reason


def test_the_document_names_the_server_it_was_fetched_from(stack):
    url = stack["server"].url
    doc = httpx.get(f"{url}/$discovery/rest", params={"version": "v1alpha1"}, timeout=10).json()
    assert doc["rootUrl"] == f"{url}/" and doc["name"] == "commentanalyzer" and doc["version"] == "v1alpha1"
    method = doc["resources"]["comments"]["methods"]["analyze"]
    assert method["path"] == "v1alpha1/comments:analyze" and method["httpMethod"] == "POST"
    other = httpx.get(f"{url}/$discovery/rest", params={"version": "v1"}, timeout=10)
    assert other.status_code == 404 and other.json()["error"]["status"] == "NOT_FOUND"
    assert "v1alpha1" in other.json()["error"]["message"]
