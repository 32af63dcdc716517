"""Reading and validating custom-resource YAML files the way the Kubernetes API server would.

`veza up` reads the same VezaPlatform / ChatRoom / StreamChannel files a cluster
gets. Each object is checked against the CRD generated from the operator's
models (`veza_operator.crds`, the single source of the schemas):

- structural schema: types, enums, bounds, lengths, patterns, required fields,
  list sizes; unknown fields are pruned (and reported as warnings, as kubectl does);
- defaults applied, then the CEL rules in `x-kubernetes-validations`, evaluated
  with cel-python on the defaulted object.

Error messages follow the API server's wording ("The ChatRoom "x" is invalid:
spec.limits.maxMessageBytes: Invalid value: 100000: ... should be less than or
equal to 65536"; several errors as "* " lines), and CEL rules are skipped, with the
API server's notice, when the object has type, enum, required or size errors, as
kube-apiserver does. A test compares them with a real kube-apiserver's answers.
Secrets (v1) in the files are read too: `stringData` and base64 `data`.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

API_VERSION = "veza.io/v1alpha1"
KINDS = ("VezaPlatform", "ChatRoom", "StreamChannel")


class CRError(Exception):
    """A CR file cannot be used: bad YAML, unknown kind, schema or CEL violation."""


@dataclass
class Resource:
    kind: str
    name: str
    spec: dict[str, Any]  # defaulted, pruned
    source: str  # file the object came from


@dataclass
class CRSet:
    platforms: list[Resource] = field(default_factory=list)
    rooms: list[Resource] = field(default_factory=list)
    channels: list[Resource] = field(default_factory=list)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# -- loading -------------------------------------------------------------------------------------


def yaml_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise CRError(f"{path}: no such file or directory")
    if not files:
        raise CRError(f"no .yaml files in {', '.join(str(p) for p in paths)}")
    return files


def load(paths: list[Path]) -> CRSet:
    """Every VezaPlatform, ChatRoom, StreamChannel and Secret in the files, validated; CRError otherwise."""
    out = CRSet()
    errors: list[str] = []
    seen: set[tuple[str, str]] = set()
    for path in yaml_files(paths):
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise CRError(f"{path}{where}: invalid YAML: {problem}") from None
        except OSError as exc:
            raise CRError(f"{path}: {exc.strerror}") from None
        for doc in docs:
            if not isinstance(doc, dict):
                errors.append(f"{path}: a document is not a mapping (got {type(doc).__name__})")
                continue
            kind, api_version = doc.get("kind"), doc.get("apiVersion")
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
            if kind == "Secret" and api_version == "v1":
                if not isinstance(name, str) or not name:
                    errors.append(f"{path}: Secret without metadata.name")
                    continue
                try:
                    out.secrets[name] = secret_values(doc)
                except (ValueError, TypeError) as exc:
                    errors.append(f"{path}: Secret {name!r}: {exc}")
                continue
            if kind not in KINDS:
                out.warnings.append(f"{path}: ignoring {api_version}/{kind} (veza up reads VezaPlatform, "
                                    "ChatRoom, StreamChannel and Secret)")
                continue
            if api_version != API_VERSION:
                errors.append(f'{path}: no matches for kind "{kind}" in version "{api_version}" '
                              f'(expected apiVersion: {API_VERSION})')
                continue
            try:
                res = validate(doc, str(path), out.warnings)
            except CRError as exc:
                errors.append(f"{path}: {exc}")
                continue
            if (kind, res.name) in seen:
                errors.append(f'{path}: duplicate {kind} "{res.name}"')
                continue
            seen.add((kind, res.name))
            {"VezaPlatform": out.platforms, "ChatRoom": out.rooms, "StreamChannel": out.channels}[kind].append(res)
    if errors:
        raise CRError("\n".join(errors))
    return out


def secret_values(doc: dict[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        values[str(key)] = base64.b64decode(str(value), validate=True).decode()
    for key, value in (doc.get("stringData") or {}).items():
        values[str(key)] = str(value)
    return values


# -- the schema ----------------------------------------------------------------------------------


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    from veza_operator import crds

    k = {kd.kind: kd for kd in crds.KINDS}[kind]
    schema: dict[str, Any] = crds.crd(k)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def validate(doc: dict[str, Any], source: str = "", warnings: list[str] | None = None) -> Resource:
    """The resource with defaults applied, or CRError with the API server's message."""
    kind = str(doc["kind"])
    schema = crd_schema(kind)
    obj = copy.deepcopy(doc)
    name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
    label = f'The {kind} "{name}" is invalid' if name else f"The {kind} is invalid"
    errors: list[str] = []
    if not isinstance(name, str) or not name:
        raise CRError(f"{kind}: metadata.name: Required value: name or generateName is required")
    unknown: list[str] = []
    body = {k: v for k, v in obj.items() if k in ("apiVersion", "kind", "metadata", "spec", "status")}
    body["metadata"] = {"name": name}
    _default(body, schema)
    blocking: list[bool] = []
    _check(body, schema, "", errors, unknown, blocking)
    if any(blocking):
        # The API server skips the CEL rules when the object has type, enum, required or size errors.
        errors.append(SKIPPED_RULES)
    else:
        _cel(body, schema, "", errors)
    for path in unknown:
        if warnings is not None:
            warnings.append(f'{source}: {kind} "{name}": unknown field "{path}"')
    if errors:
        if len(errors) == 1:
            raise CRError(f"{label}: {errors[0]}")
        raise CRError(f"{label}: \n" + "\n".join(f"* {e}" for e in errors))
    return Resource(kind, name, body.get("spec") or {}, source)


def _default(value: Any, schema: dict[str, Any]) -> None:
    """Fill defaults in place (objects only), the way the API server does before validating."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        for key, prop in props.items():
            if key not in value and "default" in prop:
                value[key] = copy.deepcopy(prop["default"])
            if key in value:
                _default(value[key], prop)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for item in value.values():
                _default(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


def _go(value: Any) -> str:
    """A value as the API server prints it in messages (%#v-ish: strings quoted)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    if value is None:
        return "null"
    return str(value)


SKIPPED_RULES = ("<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; "
                 "correct the existing errors to complete validation")
_TYPES = {"string": str, "boolean": bool, "object": dict, "array": list}


def _type_ok(value: Any, wanted: str) -> bool:
    if wanted == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if wanted == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    kind = _TYPES.get(wanted)
    return kind is None or isinstance(value, kind)


def _type_name(value: Any) -> str:
    for name, kind in (("boolean", bool), ("integer", int), ("number", float), ("string", str),
                       ("object", dict), ("array", list)):
        if isinstance(value, kind):
            return name
    return "null"


def _check(value: Any, schema: dict[str, Any], path: str, errors: list[str], unknown: list[str],
           blocking: list[bool]) -> None:
    """Structural validation in kube-openapi's order and wording (one string or number error per field)."""
    where = path or "<root>"
    wanted = schema.get("type")
    if value is None:
        if not schema.get("nullable"):
            errors.append(f'{where}: Invalid value: "null": {where} in body must be of type {wanted}: "null"')
            blocking.append(True)
        return
    if wanted and not _type_ok(value, wanted):
        errors.append(f'{where}: Invalid value: "{_type_name(value)}": {where} in body must be of type '
                      f'{wanted}: "{_type_name(value)}"')
        blocking.append(True)
        return
    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_go(v) for v in schema["enum"])
        errors.append(f"{where}: Unsupported value: {_go(value)}: supported values: {supported}")
        blocking.append(True)
        return
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: Too long: may not be more than {schema['maxLength']} bytes")
            blocking.append(True)
        elif "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: Invalid value: {_go(value)}: {where} in body should be at least "
                          f"{schema['minLength']} chars long")
        elif "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: Invalid value: {_go(value)}: {where} in body should match "
                          f"'{schema['pattern']}'")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: Invalid value: {_go(value)}: {where} in body should be less than or "
                          f"equal to {schema['maximum']}")
        elif "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: Invalid value: {_go(value)}: {where} in body should be greater than or "
                          f"equal to {schema['minimum']}")
    elif isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
            blocking.append(True)
        elif "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: Invalid value: {len(value)}: {where} in body should have at least "
                          f"{schema['minItems']} items")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _check(item, items, f"{path}[{i}]", errors, unknown, blocking)
    elif isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{_join(path, key)}: Required value")
                blocking.append(True)
        for key in list(value):
            sub = _join(path, str(key))
            if props is not None and key in props:
                _check(value[key], props[key], sub, errors, unknown, blocking)
            elif isinstance(extra, dict):
                _check(value[key], extra, sub, errors, unknown, blocking)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                unknown.append(sub)
                del value[key]  # pruned, as the API server does


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@cache
def _program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations") or []:
        ok = _evaluate(rule["rule"], value)
        if ok is not True:
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            errors.append(f"{path or '<root>'}: Invalid value: {message}")
    if isinstance(value, dict):
        for key, prop in (schema.get("properties") or {}).items():
            if key in value:
                _cel(value[key], prop, _join(path, key), errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _cel(item, schema["items"], f"{path}[{i}]", errors)


def _evaluate(rule: str, value: Any) -> bool | str:
    import celpy

    try:
        result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    except Exception as exc:
        return f"error evaluating rule: {exc}"
    return bool(result) if isinstance(result, bool | int) else str(result)


__all__ = ["CRError", "CRSet", "Resource", "crd_schema", "load", "validate", "yaml_files"]
