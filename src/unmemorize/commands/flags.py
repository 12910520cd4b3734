"""Command-line flags generated from the options models: one field, one flag, one default.

A command declares which typed spec it builds (``RunSpec`` for ``unlearn``, ``AttackRunSpec`` for
``attack``, …); :func:`command` turns every leaf field of it into a typer option (name from the
field's declared flags, else ``--`` + the field name; default and help from the field) and the
parsed values back into the spec, so the library's defaults are the command's defaults and a bad
value gets the same one-line error as in a config file, naming the flag.

Lists are comma-separated words (``--attacks miau,loss``) or a repeated flag (``--fpr 0.01 --fpr
0.05``); an optional number with a default (``--top-k``) takes ``none`` (or ``0``) for "no limit".
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ValidationError

from unmemorize.errors import UserError
from unmemorize.options import _DEPTH, field_extra, validation_message

_MISSING = object()
PANELS = ("Model", "Forget", "Method", "Run", "Band", "Training", "Profile", "Attacks", "Utility", "Eval")


@dataclass(frozen=True)
class Flag:
    """One generated option: the spec key it sets and how it reads on the command line."""

    path: tuple[str, ...]  # ("training", "lr")
    names: tuple[str, ...]  # ("--lr",)
    annotation: Any  # the field's type
    default: Any  # _MISSING for a required field
    help: str
    split: bool  # comma-separated words
    panel: str

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def param(self) -> str:
        return "__".join(self.path)

    @property
    def flag(self) -> str:
        return self.names[0].split("/")[0]


def _is_model(t) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _is_union(t) -> bool:
    return typing.get_origin(t) in (typing.Union, types.UnionType)


def _strip_optional(t):
    """(the type without None, whether None is allowed)."""
    if not _is_union(t) or type(None) not in typing.get_args(t):
        return t, False
    args = [a for a in typing.get_args(t) if a is not type(None)]
    return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), True


def flags(spec: type[BaseModel], exclude: tuple[str, ...] = (), rename: dict[str, tuple[str, ...]] | None = None,
          ) -> list[Flag]:
    """The flags of every leaf field of ``spec`` (depth first, in field order), minus ``exclude``
    (dotted keys or whole sections); ``rename`` gives a key other flag names than its field declares."""
    rename = rename or {}
    out: list[Flag] = []

    def walk(cls: type[BaseModel], defaults: Any, path: tuple[str, ...], panel: str) -> None:
        for name, info in cls.model_fields.items():
            extra = field_extra(cls, name)
            key = path + (name,)
            dotted = ".".join(key)
            if not extra.get("cli", True) or any(dotted == e or dotted.startswith(e + ".") for e in exclude):
                continue
            default = getattr(defaults, name) if defaults is not None else (
                _MISSING if info.is_required() else info.default)
            inner, _ = _strip_optional(info.annotation)
            if _is_model(inner):
                walk(inner, default if isinstance(default, BaseModel) else None, key,
                     panel if path else name.replace("_", " ").capitalize())
                continue
            names = rename.get(dotted) or tuple(extra.get("flags") or ()) or (f"--{name.replace('_', '-')}",)
            out.append(Flag(key, tuple(names), info.annotation, default, info.description or "",
                            bool(extra.get("split")), panel if path else "Run"))

    walk(spec, None, (), "Run")
    seen: dict[str, str] = {}
    for f in out:
        for n in f.names:
            for part in n.split("/"):
                if part in seen:
                    raise RuntimeError(f"flag {part} of {f.key} is already the flag of {seen[part]}")  # a schema bug
                seen[part] = f.key
    return out


# ---------------------------------------------------------------- typer parameters


def _typer_type(f: Flag):
    """(annotation typer sees, default typer sees) for a flag."""
    t, optional = _strip_optional(f.annotation)
    origin = typing.get_origin(t)
    default = None if f.default is _MISSING else f.default
    if t is bool or (_is_union(t) and bool in typing.get_args(t)):
        return bool, bool(default)
    if origin is tuple:
        args = typing.get_args(t)
        if len(args) == 2 and args[1] is Ellipsis:
            if f.split:
                return str | None, None if default is None else ",".join(map(str, default))
            item = args[0] if args[0] in (int, float, str) else str
            return list[item] | None, None if default is None else list(default)
        return t, default  # a fixed-size tuple (e.g. Adam's betas)
    if origin is Literal:
        return (str | None if optional else str), default
    if optional and default is not None and t in (int, float):
        return str, str(default)  # accepts "none"
    if t in (int, float, str, Path):
        return (t | None if optional or default is None else t), default
    return str | None, None if default is None else str(default)


def _parse(f: Flag, value: Any) -> Any:
    """A typer value back to what the spec's field takes."""
    t, optional = _strip_optional(f.annotation)
    if value is None:
        return None
    if f.split and isinstance(value, str):
        words = tuple(w.strip() for w in value.split(",") if w.strip())
        if words == ("all",) and optional:
            return None
        item = typing.get_args(t)[0] if typing.get_origin(t) is tuple else str
        if item in (int, float):
            try:
                return tuple(item(w) for w in words)
            except ValueError:
                raise UserError(f"{f.flag}: expected comma-separated numbers like 1,2,4, got {value!r}") from None
        return words
    if isinstance(value, list):
        return tuple(value)
    if optional and isinstance(value, str) and t in (int, float):
        if value.strip().lower() in ("none", "all") or value.strip() == "0":
            return None
        try:
            return t(value)
        except ValueError:
            raise UserError(f"{f.flag}: expected a number or 'none', got {value!r}") from None
    return value


def _parameter(f: Flag) -> inspect.Parameter:
    annotation, default = _typer_type(f)
    help_text = f.help
    t, _ = _strip_optional(f.annotation)
    if typing.get_origin(t) is Literal:
        help_text += f" (one of: {', '.join(map(str, typing.get_args(t)))})"
    option = typer.Option(*f.names, help=help_text, rich_help_panel=f.panel,
                          show_default=f.default is not _MISSING and default is not None)
    return inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY,
                             default=... if f.default is _MISSING else default,
                             annotation=Annotated[annotation, option])


@dataclass(frozen=True)
class Switch:
    """A flag that sets a key to a fixed value, e.g. ``--no-attacks`` → ``attacks.names = []``."""

    name: str
    key: str
    value: Any
    help: str


def build(spec: type[BaseModel], all_flags: list[Flag], values: dict[str, Any],
          switches: tuple[Switch, ...] = (), switched: dict[str, bool] | None = None):
    """The spec from parsed flag values; errors name the flag (``--lr: got -1; allowed: …``)."""
    data: dict = {}
    for f in all_flags:
        value = values.get(f.param)
        if value is None and f.default is _MISSING:
            continue
        node = data
        for part in f.path[:-1]:
            node = node.setdefault(part, {})
        node[f.path[-1]] = _parse(f, value)
    for s in switches:
        if (switched or {}).get(s.name):
            node = data
            parts = s.key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = s.value
    by_path = {f.path: f.flag for f in all_flags}

    def name(loc: tuple) -> str:
        keys = tuple(p for p in loc if isinstance(p, str))
        for n in range(len(keys), 0, -1):
            if keys[:n] in by_path:
                return by_path[keys[:n]]
        return ".".join(keys)

    token = _DEPTH.set(_DEPTH.get() + 1)
    try:
        return spec.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, spec, name=name)) from None
    finally:
        _DEPTH.reset(token)


def command(fn: Callable, spec: type[BaseModel], *, exclude: tuple[str, ...] = (),
            rename: dict[str, tuple[str, ...]] | None = None, switches: tuple[Switch, ...] = (),
            extra: tuple[inspect.Parameter, ...] = ()) -> Callable:
    """A typer command whose options are ``spec``'s fields (plus ``extra`` invocation options such as
    ``--out``), calling ``fn(spec_instance, **extra_values)``."""
    all_flags = flags(spec, exclude, rename)
    order = {p: i for i, p in enumerate(PANELS)}
    params = [_parameter(f) for f in sorted(all_flags, key=lambda f: order.get(f.panel, len(order)))]
    params += [inspect.Parameter(s.name.lstrip("-").replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, default=False,
                                 annotation=Annotated[bool, typer.Option(s.name, help=s.help)]) for s in switches]
    params += list(extra)
    extra_names = {p.name for p in extra}

    def wrapper(**kwargs):
        switched = {s.name: kwargs.get(s.name.lstrip("-").replace("-", "_"), False) for s in switches}
        built = build(spec, all_flags, kwargs, switches, switched)
        return fn(built, **{k: v for k, v in kwargs.items() if k in extra_names})

    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    wrapper.flags = all_flags  # for tests and --help tooling
    wrapper.switches = switches
    return wrapper


def extra_option(name: str, annotation: Any, default: Any, *names: str, help: str = "") -> inspect.Parameter:
    """An option of the invocation rather than of the run (``--out``, ``--overwrite``, ``--fresh``)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[annotation, typer.Option(*names, help=help)])
