"""A billing plan: which template and quota a billing price (or product) buys.

The billing webhook maps a subscription's price to desired state through these. Pure data; no I/O.
"""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specs.names import validate_name
from specs.sleep import Sleep
from specs.tenant import NAME_SCHEMA, Network, Resources

PLAN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
PLAN_ID_RULE = "must be a billing price or product id: 1-128 letters, digits, '_', '.', ':' and '-'"


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["Plan"] = "Plan"
    id: str = Field(description="The billing system's price id (price_...) or product id (prod_...)",
                    json_schema_extra={"pattern": PLAN_ID_PATTERN})
    template: str = Field(json_schema_extra=NAME_SCHEMA)
    resources: Resources = Field(default_factory=Resources)
    network: Network = Field(default_factory=Network)
    sleep: Sleep | None = None  # None: the template's rule
    description: str = Field(default="", max_length=500)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not isinstance(value, str) or not re.fullmatch(PLAN_ID_PATTERN, value):
            raise ValueError(PLAN_ID_RULE)
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        return validate_name(value)
