"""docs/api-reference.md, rendered from the API's OpenAPI document so the two never disagree.

Run `python -m reconciler.web.api_reference` after changing a route; a test fails while the file is stale.
"""

import json
import tempfile
from pathlib import Path
from typing import Any

from reconciler.web.app import create_app
from reconciler.web.context import WebContext
from state import Store

DOC = Path(__file__).resolve().parents[2] / "docs" / "api-reference.md"


def openapi_document() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        store = Store(f"sqlite:///{directory}/fleet.db")
        try:
            document: dict[str, Any] = create_app(WebContext(store)).openapi()
        finally:
            store.close()
    return document


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"list of {_schema_name(schema.get('items', {}))}"
    if "anyOf" in schema:
        return " or ".join(_schema_name(s) for s in schema["anyOf"])
    return str(schema.get("type", "object"))


def _rules(schema: dict[str, Any]) -> str:
    """A parameter's rules as the schema states them (a client checks them before sending)."""
    schema = schema.get("items", schema) if schema.get("type") == "array" else schema
    rules = [f"{key} `{schema[key]}`" for key in ("pattern", "minimum", "maximum", "maxLength") if key in schema]
    return f" ({', '.join(rules)})" if rules else ""


def render(document: dict[str, Any]) -> str:
    lines = [
        "# API reference",
        "",
        f"{document['info']['title']} {document['info']['version']}. Generated from the OpenAPI document "
        "(`GET /api/v1/openapi.json`, interactive at `/api/v1/docs`) by `python -m reconciler.web.api_reference`; "
        "do not edit by hand.",
        "",
        document["info"].get("description", ""),
        "",
        "Errors are always `{\"error\": {\"field\", \"rule\", \"message\"}}`: 401 no or bad token, 403 role, 404, "
        "409 conflict (a PATCH whose If-Match is not the tenant's generation any more), reused Idempotency-Key "
        "or a template that does not exist (yet), 410 a watch revision older than the pruned deletions (list "
        "again, then watch), 413 body over the limit (FLEET_MAX_BODY, 1Mi), 422 invalid input (nothing "
        "written), 503 retry.",
        "",
        "The document states the rules the server enforces (name and label patterns, quantity patterns and "
        "bounds, the status codes and error body of each operation), so a client that validates a request "
        "against it gets the server's answer without sending it. CI holds it to that: "
        "`tests/web/test_schemathesis.py` runs schemathesis over it with every check, positive and negative "
        "data and hostile headers (settings in `schemathesis.toml`), and fails on any finding.",
        "",
        "Not in the OpenAPI document (it has no websockets): the exec websocket `/api/v1/tenants/{name}/exec` "
        "(operator tokens), `fleet exec` over the API and what a web terminal is built on; its protocol is in "
        "[exec.md](exec.md).",
        "",
    ]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            lines += [f"## `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            security = "none (signed)" if "webhooks" in path else (
                "none" if path == "/healthz" else "`Authorization: Bearer TOKEN`")
            lines.append(f"- Auth: {security}")
            for parameter in operation.get("parameters", []):
                where = parameter["in"]
                lines.append(f"- {where} `{parameter['name']}`{' (required)' if parameter.get('required') else ''}:"
                             f" {_schema_name(parameter.get('schema', {}))}{_rules(parameter.get('schema', {}))}"
                             + (f" — {parameter['description']}" if parameter.get("description") else ""))
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                lines.append(f"- Body: {_schema_name(body)}")
            answers = ", ".join(f"{code}" for code in operation.get("responses", {}))
            lines += [f"- Responses: {answers}", ""]
    lines += ["## Schemas", "", "```json", json.dumps(document.get("components", {}).get("schemas", {}),
                                                      indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def main() -> None:
    DOC.write_text(render(openapi_document()))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
