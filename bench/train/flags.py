"""The command line of `TrainConfig`: one flag per field, derived from the field.

`--<field name, - for _>` (or the `flag` of its metadata) of the field's type, with
its default, help and metavar; a choice field shows its choices as the metavar. The
values are checked by `TrainConfig.validate` alone, so a bad one is the same
one-line error from the command line as from a study file. A bool is `--x/--no-x`;
a dict is a repeatable `KEY=VALUE` (`bench.models.parse_knobs`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Collection, Mapping
from dataclasses import MISSING, Field, fields

from bench.models import parse_knobs
from bench.train.config import TrainConfig, field_choices, field_types


def flag_of(f: Field) -> str:
    return "--" + f.metadata.get("flag", f.name).replace("_", "-")


def add_config_arguments(
    p: argparse.ArgumentParser,
    names: Collection[str] | None = None,
    cls: type = TrainConfig,
    *,
    unset: Mapping[str, str] | None = None,
) -> None:
    """A flag for each field of `cls` (or for those in `names`), in field order.

    `unset`: fields whose flag defaults to None, for the command to resolve (e.g. from the
    device); each maps to the words --help gives as its default.
    """
    types = field_types(cls)
    unset = unset or {}
    _chosen(cls, unset)  # an unknown name there is a typo too
    for f in _chosen(cls, names):
        p.add_argument(flag_of(f), dest=f.name, **_argument(f, types[f.name][0], unset.get(f.name)))


def _argument(f: Field, kind: type, unset: str | None = None) -> dict:
    help_text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
    default = None if unset is not None else f.default if f.default is not MISSING else f.default_factory()
    if kind is bool:
        help_text += f" (default {unset or ('on' if default else 'off')})".replace("%", "%%")
        return dict(action=argparse.BooleanOptionalAction, default=default, help=help_text)
    if kind is dict:
        return dict(action="append", default=[], metavar=f.metadata.get("metavar"), help=help_text)
    env = f.metadata.get("env")
    if unset is not None:
        help_text += f" (default {unset})".replace("%", "%%")
    elif env:
        help_text += f" (default ${env}, else {default})"
        default = os.environ.get(env, default)
    elif default is not None:
        help_text += " (default %(default)s)"
    choices = field_choices(f)
    metavar = f.metadata.get("metavar") or ("{" + ",".join(choices) + "}" if choices else None)
    return dict(type=kind, default=default, metavar=metavar, help=help_text)


def config_values(args: argparse.Namespace, names: Collection[str] | None = None, cls: type = TrainConfig) -> dict:
    """The values of the fields' flags in `args` (those of `names`, else all), as the fields take them."""
    types = field_types(cls)
    return {
        f.name: parse_knobs(getattr(args, f.name)) if types[f.name][0] is dict else getattr(args, f.name)
        for f in _chosen(cls, names)
    }


def config_from_args(args: argparse.Namespace, cls: type = TrainConfig) -> TrainConfig:
    return cls(**config_values(args, cls=cls))


def _chosen(cls: type, names: Collection[str] | None) -> list[Field]:
    chosen = [f for f in fields(cls) if names is None or f.name in names]
    unknown = set(names or ()) - {f.name for f in chosen}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    return chosen
