"""The OpenAPI document: fuzzed over real HTTP (schemathesis) without a single 5xx, and
docs/api-reference.md generated from it and kept up to date."""

from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from reconciler.web.reference import openapi_document, render
from state.access import Role
from tests.web.conftest import Web

ROOT = Path(__file__).resolve().parents[2]


def test_fuzzing_the_openapi_document_finds_no_server_error(web: Web) -> None:
    schema = schemathesis.openapi.from_url(f"{web.api}/api/v1/openapi.json")
    headers = {"authorization": f"Bearer {web.tokens[Role.OPERATOR]}"}
    fuzzed = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/v1/watch":
            continue  # an endless stream: tested in test_watch.py

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=web.api, headers=headers, timeout=10)
            case.validate_response(response, checks=[not_a_server_error])

        call()
        fuzzed.append(f"{operation.method.upper()} {operation.path}")
    assert len(fuzzed) >= 14, fuzzed


def test_the_api_reference_is_generated_from_the_current_openapi_document(web: Web) -> None:
    document = httpx.get(f"{web.api}/api/v1/openapi.json", timeout=10).json()
    assert document == openapi_document()
    assert (ROOT / "docs" / "api-reference.md").read_text() == render(document), (
        "docs/api-reference.md is stale: run `python -m reconciler.web.reference`"
    )
