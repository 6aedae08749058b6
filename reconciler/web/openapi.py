"""The last step of the API's OpenAPI document, where FastAPI's output would mislead a client:

- Schemas a route embeds whole (a pydantic model's `model_json_schema()`, as the webhook does for its
  raw body) bring their definitions under a local `$defs` with `#/$defs/...` references, which resolve
  against the document's root in OpenAPI and so point nowhere. They are moved to `components/schemas`,
  where every other schema lives.
- An optional parameter (`str | None = None`) is documented as "a string or null"; but a header, query
  or path parameter is text or absent, never null (a client would send the text "null"). The null is
  dropped: absent is what `required: false` says.

Nothing else about what a schema accepts is changed.
"""

import copy
from typing import Any
from urllib.parse import quote, unquote

LOCAL = "#/$defs/"
COMPONENTS = "#/components/schemas/"


def link(path: str, method: str, description: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to the operation `method path`, its parameters taken from the response (runtime
    expressions such as `$response.body#/name`): how a client, or a fuzzer, goes from a created resource
    to the operations on it."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{quote(pointer, safe='~')}/{method.lower()}", "parameters": parameters,
            "description": description}


def _rewrite(node: Any, names: dict[str, str]) -> Any:
    if isinstance(node, dict):
        reference = node.get("$ref")
        if isinstance(reference, str) and reference.startswith(LOCAL):
            name = reference.removeprefix(LOCAL)
            if name not in names:
                raise ValueError(f"OpenAPI: {reference} is defined nowhere")
            node = {**node, "$ref": COMPONENTS + names[name]}
        return {key: _rewrite(value, names) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite(item, names) for item in node]
    return node


def _hoist(node: Any, schemas: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_hoist(item, schemas) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _hoist(value, schemas) for key, value in node.items()}
    definitions = node.pop("$defs", None)
    if not definitions:
        return node
    names = {name: name for name in definitions}
    for name, schema in definitions.items():
        schema = _rewrite(schema, names)
        if name in schemas and schemas[name] != schema:
            raise ValueError(f"OpenAPI: two different schemas are both named {name}")
        schemas[name] = schema
    return _rewrite(node, names)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    choices = schema.get("anyOf")
    if not isinstance(choices, list) or {"type": "null"} not in choices:
        return schema
    rest = [choice for choice in choices if choice != {"type": "null"}]
    others = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**rest[0], **others} if len(rest) == 1 else {**others, "anyOf": rest}


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """The document with every local `$defs` moved into `components/schemas` (references rewritten) and
    no parameter documented as null; the argument is not changed."""
    document = copy.deepcopy(document)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    document["paths"] = _hoist(document.get("paths", {}), schemas)
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    for operations in document["paths"].values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if "schema" in parameter:
                    parameter["schema"] = _without_null(parameter["schema"])
    return document


def unresolved_references(document: dict[str, Any]) -> list[str]:
    """Every `$ref` and link `operationRef` in the document that does not point at something in it (a test
    keeps this empty)."""
    missing: list[str] = []

    def resolves(reference: str) -> bool:
        if not reference.startswith("#/"):
            return False
        target: Any = document
        for part in unquote(reference[2:]).split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                return False
            target = target[part]
        return True

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("$ref", "operationRef"):
                reference = node.get(key)
                if isinstance(reference, str) and not resolves(reference):
                    missing.append(reference)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    return missing


__all__ = ["finish", "link", "unresolved_references"]
