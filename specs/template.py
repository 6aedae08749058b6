"""A template: the read-only filesystem tenants are cloned from, with the defaults they inherit."""

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specs.names import validate_name
from specs.sleep import Sleep
from specs.tenant import NAME_SCHEMA, Network, Resources

_VERSION_RULE = "must be 1-32 characters of a-z, 0-9, '.', '_' and '-'"
VERSION_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,31}$"


class Template(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(json_schema_extra=NAME_SCHEMA)
    version: str = Field(default="1", json_schema_extra={"pattern": VERSION_PATTERN})
    resources: Resources = Field(default_factory=Resources)
    network: Network = Field(default_factory=Network)
    sleep: Sleep = Field(default_factory=Sleep)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_name(value)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.fullmatch(VERSION_PATTERN, value):
            raise ValueError(_VERSION_RULE)
        return value

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"
