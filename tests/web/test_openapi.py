"""The OpenAPI document: every reference in it resolves, what the API answers matches it (fuzzed with
every check in test_schemathesis.py), and docs/api-reference.md is generated from it and kept up to date."""

from pathlib import Path

import httpx

from reconciler.web.api_reference import openapi_document, render
from reconciler.web.openapi import unresolved_references
from tests.web.conftest import Web

ROOT = Path(__file__).resolve().parents[2]


def test_every_reference_and_link_in_the_openapi_document_resolves() -> None:
    document = openapi_document()
    assert unresolved_references(document) == []
    assert "$defs" not in str(document), "a schema brought its own $defs: they resolve against the root"
    assert document["paths"]["/api/v1/webhooks/billing"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]["data"] == {"$ref": "#/components/schemas/EventData"}


def test_no_parameter_is_documented_as_null() -> None:
    """A header or query parameter is text or absent: a client told it may be null sends the text "null"."""
    for path, operations in openapi_document()["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                assert "null" not in str(parameter["schema"]), (method, path, parameter)


def test_a_405_lists_every_method_of_the_path_in_allow(web: Web) -> None:
    with web.client() as client:
        refused = client.request("OPTIONS", "/api/v1/tenants/acme")
        assert refused.status_code == 405 and refused.headers["allow"] == "DELETE, GET, PATCH"
        assert client.post("/api/v1/plans/price_x").headers["allow"] == "DELETE, GET, PUT"


def test_the_api_reference_is_generated_from_the_current_openapi_document(web: Web) -> None:
    document = httpx.get(f"{web.api}/api/v1/openapi.json", timeout=10).json()
    assert document == openapi_document()
    assert (ROOT / "docs" / "api-reference.md").read_text() == render(document), (
        "docs/api-reference.md is stale: run `python -m reconciler.web.api_reference`"
    )
