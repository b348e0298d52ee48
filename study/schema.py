"""The JSON Schema of a sweep spec, for editors: every form the spec accepts, shorthands included.

pydantic's own schema of SweepSpec describes the models after their "before" validators ran, so
it rejects what a user writes by hand: a dataset, arch or attack by its name alone
(`archs: [small_cnn]`, `targets: [digits]`, `attacks: [fgsm_rs]`) and eps as a fraction
(`eps: ["8/255"]`). This module takes that schema and adds the two forms where the validators
accept them. Unknown keys stay errors (additionalProperties: false, as StrictModel rejects
them). `study schema` prints it; tests/unit/study/test_schema.py checks every spec in sweeps/
and the README's against it with the jsonschema package.
"""

from __future__ import annotations

import copy
from typing import Any

from study.spec import SweepSpec

SCHEMA_ID = "https://atsweep.invalid/sweep-spec.schema.json"

# Models whose "before" validator turns a bare string into {their name field: the string}.
NAMED_SHORTHANDS = {"DatasetSpec": "dataset", "ArchSpec": "name", "AttackSpec": "method"}

# (model, field) whose numbers may be written as fractions ('8/255': study.spec.parse_eps).
FRACTION_FIELDS = (
    ("GridSpec", "eps"),
    ("RobustnessSpec", "eps"),
    ("RobustnessSpec", "autoattack_eps"),
    ("SpaceSpec", "eps"),
    ("NetworkSpec", "eps"),
)

FRACTION = {
    "type": "string",
    "pattern": r"^\s*[0-9.eE+-]+\s*/\s*[0-9.eE+-]+\s*$",
    "description": "a fraction, as papers write Linf radii: '8/255'",
}


def _with_fractions(node: Any) -> Any:
    """A copy of a schema node in which every plain number may also be a fraction string."""
    if isinstance(node, dict):
        if node.get("type") == "number" and set(node) <= {"type", "title", "description"}:
            return {"anyOf": [node, FRACTION]}
        return {key: _with_fractions(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_with_fractions(item) for item in node]
    return node


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a sweep spec file, as YAML or JSON."""
    schema = copy.deepcopy(SweepSpec.model_json_schema(mode="validation"))
    defs = schema["$defs"]
    for model, field in FRACTION_FIELDS:
        properties = defs[model]["properties"]
        properties[field] = _with_fractions(properties[field])
    for model, field in NAMED_SHORTHANDS.items():
        body = defs[model]
        named = {
            "type": "string",
            "description": f"{model.removesuffix('Spec').lower()} by its {field} alone",
        }
        enum = body["properties"][field].get("enum")
        if enum:
            named["enum"] = enum
        defs[model] = {"anyOf": [named, body], "description": body.get("description", "")}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "atsweep sweep spec"
    return schema
