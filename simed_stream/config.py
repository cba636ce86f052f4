"""Settings as typed, validated pydantic models, read from YAML (and, in the CLI, from flags).

Every model forbids unknown keys, so a typo such as `defocus_nm` is an error naming the key
and listing what is allowed instead of being silently ignored. A command's settings model is
the one place its options are declared: `simed_stream/cli/options.py` makes the command-line
flags from it, `read_yaml_mapping` + `validate_config` the YAML keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from simed_stream.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for configuration sections: unknown keys are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Settings(StrictModel):
    """A settings model built in code (not only from a file): invalid values raise a ConfigError
    naming the key, the value and the rule, like a bad configuration file does."""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise ConfigError(format_validation_error(type(self), error, f"{type(self).__name__}")) from None


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at the nesting level `loc` points into."""
    current: type[BaseModel] = model
    for part in loc:
        field = current.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            break
    return sorted(current.model_fields)


def format_validation_error(model: type[BaseModel], error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        loc = item["loc"]
        key = ".".join(str(part) for part in loc) or "<root>"
        if item["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(model, loc[:-1]))
            lines.append(f"  unknown key '{key}'; allowed here: {allowed}")
        else:
            if not loc:  # a check across several keys: its message names them
                lines.append(f"  {item['msg'].removeprefix('Value error, ')}")
                continue
            field = _field_for(model, loc)
            hint = f" ({field.description})" if field is not None and field.description else ""
            lines.append(f"  key '{key}': {item['msg']}, got {item.get('input')!r}{hint}")
    return "\n".join(lines)


def _field_for(model: type[BaseModel], loc: tuple[Any, ...]):
    current: type[BaseModel] = model
    field = None
    for part in loc:
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
    return field


def validate_config(model: type[ModelT], data: dict[str, Any], source: str) -> ModelT:
    """Build `model` from plain data, turning validation failures into a ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(model, error, source)) from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file whose top level must be a mapping."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"configuration file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return `base` updated by `override`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def cli(*flags: str, positional: bool = False) -> dict[str, Any]:
    """`json_schema_extra` of a settings field, for the command line: more flag names besides
    the one made from the field's name (e.g. a short or a historical one), or a positional argument."""
    return {"cli_flags": list(flags), "cli_positional": positional}
