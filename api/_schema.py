"""Building blocks shared by the spec and status models: the base model and CEL rule helpers.

Every model is camelCase on the wire (``mountPath``), snake_case in Python (``mount_path``), and
documented by attribute docstrings: pydantic turns them into descriptions, which the CRD carries
and ``kubectl explain`` prints. Cross-field rules are written once, as CEL, and attached to the
schema with :func:`cel`; :func:`exactly_one` also checks the rule in Python so that code which
builds models directly (the gateway, tests) gets the same answer as the apiserver.
"""

from typing import Annotated, Any, ClassVar, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

CEL_KEY = "x-kubernetes-validations"


class ApiModel(BaseModel):
    """Base of every API model: camelCase aliases, docstrings as descriptions, strict fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )


def cel(rule: str, message: str, *, field_path: str | None = None) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry; ``field_path`` points the error at a child."""
    entry = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    return entry


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    """The ``json_schema_extra`` that attaches CEL rules to a model or field schema."""
    return {CEL_KEY: list(entries)}


def exactly_one_rule(what: str, fields: tuple[str, ...]) -> dict[str, str]:
    """CEL: exactly one of ``fields`` (camelCase names) is set."""
    present = ", ".join(f"has(self.{f})" for f in fields)
    names = ", ".join(fields)
    return cel(f"[{present}].filter(x, x).size() == 1", f"{what}: set exactly one of {names}")


class OneOf(ApiModel):
    """A model whose fields are alternatives: exactly one of ``ONE_OF`` must be set.

    The rule is checked in Python and emitted into the schema as CEL, from the same list.
    """

    ONE_OF: ClassVar[tuple[str, ...]] = ()
    WHAT: ClassVar[str] = "this object"

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if len([name for name in self.ONE_OF if getattr(self, name) is not None]) != 1:
            raise ValueError(exactly_one_rule(self.WHAT, self._wire_names())["message"])
        return self

    @classmethod
    def _wire_names(cls) -> tuple[str, ...]:
        return tuple(to_camel(name) for name in cls.ONE_OF)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        schema.setdefault(CEL_KEY, []).insert(0, exactly_one_rule(cls.WHAT, cls._wire_names()))
        return schema

    def chosen(self) -> str:
        """The Python name of the alternative that is set."""
        return next(name for name in self.ONE_OF if getattr(self, name) is not None)


def _check_abs_path(value: str) -> str:
    if not value.startswith("/") or ".." in value.split("/"):
        raise ValueError(f"{value!r} must be an absolute path without '..' segments")
    return value


ABS_PATH_RULE = cel(
    "self.startsWith('/') && !self.matches('(^|/)[.][.](/|$)')",
    "must be an absolute path without '..' segments",
)

AbsPath = Annotated[
    str,
    Field(min_length=1, max_length=4096, json_schema_extra=rules(ABS_PATH_RULE)),
    AfterValidator(_check_abs_path),
]
"""An absolute path with no ``..`` segment (checked by CEL in the CRD and in Python)."""

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
"""The name of an object in the Sandbox's namespace (a DNS subdomain)."""
