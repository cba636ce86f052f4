"""Command-line flags made from a settings model, and settings made from flags and YAML.

A command declares its settings once, as a pydantic model; every field becomes a flag
(`--batch-size` for `batch_size`, `--diameter-A` for `picking.diameter_A`, or the names in the
field's `cli(...)`), and `--config FILE.yaml` reads the same keys from a file. Flags given on the
command line override the file. argparse only collects strings: pydantic alone checks and
converts them, with the same messages as for a file.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Literal, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from simed_stream.config import deep_merge, read_yaml_mapping, validate_config

ModelT = TypeVar("ModelT", bound=BaseModel)


def settings_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every setting, nested models' fields included; YAML nests them."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from settings_fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def add_settings(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """A flag (or positional argument) per setting of `model`, and `--config`."""
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="settings from a YAML file, keys as the options below with '_' (nested: picking: "
                        "{diameter_A: 40}); options given here override it")
    add_fields(parser, model)


def add_fields(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """A flag (or positional argument) per setting of `model`; `settings_from_args` reads them back."""
    for key, info in settings_fields(model):
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        many = getattr(info.annotation, "__origin__", None) is list
        options: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": _help(info)}
        if extra.get("cli_positional"):
            parser.add_argument(key, nargs="*" if many else "?", metavar=key.upper(), **{
                k: v for k, v in options.items() if k != "dest"})
            continue
        flags = extra.get("cli_flags") or ["--" + key.rsplit(".", 1)[-1].replace("_", "-")]
        choices = getattr(info.annotation, "__args__", None) if getattr(info.annotation, "__origin__", None) is Literal \
            else None
        options["metavar"] = "{" + ",".join(map(str, choices)) + "}" if choices else key.rsplit(".", 1)[-1].upper()
        if info.annotation is bool:
            del options["metavar"]
            options["action"] = argparse.BooleanOptionalAction
        elif many:
            options["nargs"] = "+"
        parser.add_argument(*flags, **options)


def _help(info) -> str:
    text = (info.description or "").replace("%", "%%")
    if info.is_required():
        return f"{text} (required)"
    default = info.default if info.default is not PydanticUndefined else None
    if default is None or "default" in text:  # None, or said in words
        return text
    return f"{text} (default: {default})"


def settings_from_args(model: type[ModelT], args: argparse.Namespace) -> ModelT:
    """`model` from `--config` (when given) overridden by the flags given; a ConfigError names
    each bad key."""
    config = getattr(args, "config", None)
    data = read_yaml_mapping(config) if config else {}
    given: dict[str, Any] = {}
    for key, _ in settings_fields(model):
        if hasattr(args, key):
            *parents, leaf = key.split(".")
            level = given
            for part in parents:
                level = level.setdefault(part, {})
            level[leaf] = getattr(args, key)
    source = "the command line" + (f" and {config}" if config else "")
    return validate_config(model, deep_merge(data, given), source)


def add_command(commands, name: str, model: type[ModelT], run: Callable[[ModelT], int], help: str) -> None:
    """A subcommand whose options are `model`'s settings: `run(settings)` runs it, and its
    docstring is the command's description."""
    parser = commands.add_parser(name, help=help, description=" ".join((run.__doc__ or "").split()))
    add_settings(parser, model)
    parser.set_defaults(handler=lambda args: run(settings_from_args(model, args)))
