"""Dagster config and resource fields made from the pure packages' option dataclasses.

An option (a run's ``workers``, the loader's ``batch_rows``) is defined once, with its default, in
the dataclass its code takes; the Dagster class shows the same fields in the launchpad, and
``options_from`` turns a run's config back into the dataclass. A field whose default is a setting
(``settings.configured``) is optional here: left unset, the dataclass reads the settings table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, get_type_hints

from dagster import Config
from pydantic import BaseModel, create_model

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def fields_of(options: type, base: type[M] = Config) -> type[M]:
    """A subclass of ``base`` (a ``Config`` or ``ConfigurableResource``) with the fields of ``options``."""
    hints = get_type_hints(options)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        if "setting" in f.metadata:
            fields[f.name] = (hints[f.name] | None, None)
        else:
            fields[f.name] = (hints[f.name], f.default)
    return create_model(f"{options.__name__}Fields", __base__=base, **fields)


def options_from(model: BaseModel, options: type[T], **overrides: Any) -> T:
    """``options`` from the model's fields of the same names, each overridden by a non-None
    ``overrides`` entry (a run's choice); a field left None takes the dataclass default, so a setting
    comes from the settings table."""
    values = {f.name: getattr(model, f.name) for f in dataclasses.fields(options) if f.name in type(model).model_fields}
    values.update((name, value) for name, value in overrides.items() if value is not None)
    return options(**{name: value for name, value in values.items() if value is not None})
