"""Property-based requests from the server's own OpenAPI document (schemathesis), against the real
server and worker: whatever the request, valid or not, the answer is never a 5xx and it matches
the document (status code, content type, response schema).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from serve_fixtures import KEYS

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.parametrize(("method", "path", "examples"), [
    ("POST", "/v1alpha1/comments:analyze", 40), ("POST", "/v1/score", 30),
    ("GET", "/v1alpha1/attributes", 5), ("GET", "/healthz", 5),
])
def test_no_request_from_the_openapi_document_gets_a_server_error(stack, method, path, examples):
    operation = schemathesis.openapi.from_url(f"{stack['server'].url}/openapi.json")[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    seen: dict[int, int] = {}

    @given(case=cases)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        response = case.call_and_validate(headers={"X-Goog-Api-Key": KEYS[0]}, checks=CHECKS)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1

    fuzz()
    assert seen.get(200), seen  # the fuzz reached the work, not only the refusals
    if method == "POST":
        assert seen.get(400), seen
