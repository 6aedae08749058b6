"""Reading tenant documents (YAML or JSON, one or many) and saying exactly what is wrong with one; the CLI
reads them from a file, the API (`POST /api/v1/apply`) from a request, with the same checks and words.

Light to import: every command imports this module for `BadInput`, and `fleet --server` must start without
pydantic or the store, so YAML, pydantic and the specs are loaded only by the functions that need them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

    from specs import Tenant


class BadInput(Exception):
    """Input the user must fix; the CLI prints it on one line and exits 2."""


def describe_validation(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "document"
    kind = first["type"]
    if kind == "extra_forbidden":
        rule = "unknown field"
    elif kind == "missing":
        rule = "is required"
    else:
        rule = first["msg"].removeprefix("Value error, ")
    more = len(error.errors()) - 1
    return f"{field}: {rule}" + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def load_documents(source: str) -> list[Any]:
    if source == "-":
        text, origin = sys.stdin.read(), "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            raise BadInput(f"-f: no such file {source}")
        text, origin = path.read_text(), source
    if text.lstrip().startswith(("{", "[")):  # JSON: no YAML parser to load
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            raise BadInput(f"{origin}: not valid YAML or JSON: {str(error).splitlines()[0]}") from error
        documents = loaded if isinstance(loaded, list) else [loaded]
    else:
        import yaml

        try:
            documents = [doc for doc in yaml.load_all(text, Loader=_loader(yaml)) if doc is not None]
        except yaml.YAMLError as error:
            raise BadInput(f"{origin}: not valid YAML or JSON: {str(error).splitlines()[0]}") from error
    if not documents:
        raise BadInput(f"{origin}: no documents found")
    return documents


def _loader(yaml: Any) -> Any:
    """libyaml's safe loader where PyYAML was built with it (several times faster), else the pure one."""
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_tenants(documents: list[Any]) -> list[Tenant]:
    from pydantic import ValidationError

    from specs import Tenant

    tenants = []
    seen: set[str] = set()
    for index, document in enumerate(documents, start=1):
        label = f"document {index}"
        if not isinstance(document, dict):
            raise BadInput(f"{label}: must be a mapping with kind, metadata and spec")
        name = (document.get("metadata") or {}).get("name") if isinstance(document.get("metadata"), dict) else None
        if name:
            label += f" ({name})"
        if document.get("kind", "Tenant") != "Tenant":
            raise BadInput(f"{label}: kind: must be 'Tenant'")
        try:
            tenant = Tenant.model_validate(document)
        except ValidationError as error:
            raise BadInput(f"{label}: {describe_validation(error)}") from error
        if tenant.metadata.name in seen:
            raise BadInput(f"{label}: metadata.name: {tenant.metadata.name} appears twice")
        seen.add(tenant.metadata.name)
        tenants.append(tenant)
    return tenants
