"""`-l`/`--selector` and `--field-selector` of `fleet get tenants`, as kubectl spells them.

Labels: `key=value[,key2=value2]`, all must match. Fields: `FIELD=VALUE` or `FIELD!=VALUE`, comma-separated,
all must hold, on `phase` (Pending, Running, ...), `node` (the node it runs on; empty: not on one yet),
`template` (the template's name) and `plan` (the billing plan a live subscription gave it; empty: none).
A selector that names an unknown field, or a phase that does not exist, is input to fix (exit 2).
"""

from dataclasses import dataclass

from reconciler.documents import BadInput
from specs import Phase, Tenant
from specs.tenant import LABEL_SELECTOR_PATTERN

FIELDS = ("phase", "node", "template", "plan")
# What the API's `selector` and `field_selector` take (a schema a client can check, and fuzz, before sending):
# no stricter than the parsers below, which also skip empty parts and spaces.
_LABEL = LABEL_SELECTOR_PATTERN.removeprefix("^").removesuffix("$")
LABEL_SELECTOR_LIST_PATTERN = f"^{_LABEL}(,{_LABEL})*$"
_FIELD = (f"(phase(=|==|!=)({'|'.join(phase.value for phase in Phase)})"
          "|(node|template|plan)(=|==|!=)[^,!=]*)")
FIELD_SELECTOR_PATTERN = f"^{_FIELD}(,{_FIELD})*$"


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool  # True for `=` (or `==`), False for `!=`

    def holds(self, actual: str) -> bool:
        return (actual == self.value) == self.equal


def parse_field_selector(text: str) -> list[FieldRequirement]:
    requirements = []
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        if "!=" in part:
            field, value, equal = *part.split("!=", 1), False
        elif "=" in part:
            field, value, equal = *part.replace("==", "=", 1).split("=", 1), True
        else:
            raise BadInput(f"--field-selector: {part!r} must be FIELD=VALUE or FIELD!=VALUE")
        field, value = field.strip(), value.strip()
        if field not in FIELDS:
            raise BadInput(f"--field-selector: unknown field {field!r}; choose one of: {', '.join(FIELDS)}")
        if field == "phase" and value not in {phase.value for phase in Phase}:
            raise BadInput(f"--field-selector: phase {value!r} does not exist; one of: "
                           f"{', '.join(phase.value for phase in Phase)}")
        requirements.append(FieldRequirement(field, value, equal))
    return requirements


def parse_label_selector(text: str) -> dict[str, str]:
    import re

    labels = {}
    for part in (piece.strip() for piece in text.split(",")):
        if not part:
            continue
        if not re.fullmatch(LABEL_SELECTOR_PATTERN, part):
            raise BadInput(f"--selector: {part!r} must be KEY=VALUE (a label key and value)")
        key, value = part.split("=", 1)
        labels[key] = value
    return labels


def field_of(tenant: Tenant, field: str, plans: dict[str, str]) -> str:
    status = tenant.status
    match field:
        case "phase":
            return status.phase.value if status else Phase.PENDING.value
        case "node":
            return (status.node if status else None) or ""
        case "template":
            return tenant.spec.template
        case _:
            return plans.get(tenant.metadata.name, "")


def select(tenants: list[Tenant], requirements: list[FieldRequirement], plans: dict[str, str]) -> list[Tenant]:
    return [t for t in tenants if all(r.holds(field_of(t, r.field, plans)) for r in requirements)]


def needs_plans(requirements: list[FieldRequirement]) -> bool:
    return any(requirement.field == "plan" for requirement in requirements)
