"""Typed options: one pydantic model per concern, shared by the YAML reader, the CLI and the library.

Every setting is declared once, as a field with its default, its constraint and its help text, on
the model of the part it configures (``UnlearnOptions`` in the unlearning loop, ``AttackSettings``
in the attacks, …). Run configs (:mod:`unmemorize.spec`) nest these models under their YAML keys,
and the command line is generated from the same fields (:mod:`unmemorize.commands.flags`), so a
default cannot differ between the library, a config file and a flag.

Errors are for people: :func:`validate` turns pydantic's errors into one :class:`UserError` that
names the key (``methods[1].switch_below``) or the flag, what was given and what is allowed.
"""

from __future__ import annotations

import contextvars
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from unmemorize.errors import UserError

T = TypeVar("T", bound=BaseModel)
_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("unmemorize_options_depth", default=0)


class Options(BaseModel):
    """Base of every options model: unknown keys are errors, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=False)

    def __init__(self, **data: Any):
        # A library caller gets the same one-line UserError as a config file or a flag would. pydantic
        # also calls __init__ for nested models: those must raise ValidationError, which pydantic then
        # places under the parent's key, so only the outermost call translates.
        depth = _DEPTH.get()
        token = _DEPTH.set(depth + 1)
        try:
            super().__init__(**data)
        except ValidationError as e:
            if depth:
                raise
            raise UserError(f"{type(self).__name__}: {validation_message(e, type(self))}") from None
        finally:
            _DEPTH.reset(token)

    def replace(self: T, **changes: Any) -> T:
        """A validated copy with ``changes`` (``model_copy`` would skip validation)."""
        return type(self)(**{**{k: getattr(self, k) for k in type(self).model_fields}, **changes})


def option(default: Any = ..., help: str = "", *flags: str, allowed: str | None = None, cli: bool = True,
           yaml: bool = True, split: bool = False, **constraints: Any):
    """A field with its help text and how it appears on the command line.

    ``flags``: the option names (default ``--`` + the field name with dashes); ``allowed``: the words
    an error uses to say what is accepted; ``cli=False``: no flag (a key of config files only, e.g.
    a table label); ``yaml=False``: the library's own knob, neither a key nor a flag;
    ``split``: a list given on the command line as comma-separated words (``--attacks miau,loss``);
    ``constraints``: pydantic's (``ge``, ``le``, ``gt`` …).
    """
    extra = {"flags": list(flags), "allowed": allowed, "cli": cli and yaml, "yaml": yaml, "split": split}
    return Field(default, description=help, json_schema_extra=extra, **constraints)


def field_extra(cls: type[BaseModel], name: str) -> dict:
    extra = cls.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


# ---------------------------------------------------------------- errors that name the key

def location(loc: tuple) -> str:
    """pydantic's error location as a config key: ('methods', 1, 'switch_below') → methods[1].switch_below."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "tagged-union")):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'} ({str(value)[:60]})"
    return repr(value)


def _allowed_for(cls: type[BaseModel] | None, loc: tuple) -> str | None:
    """The ``allowed`` words of the field at ``loc`` (walking nested models), if it declares any."""
    for i, part in enumerate(loc):
        if cls is None or not isinstance(part, str) or part not in cls.model_fields:
            continue
        if i == len(loc) - 1 or all(isinstance(p, int) for p in loc[i + 1:]):
            return field_extra(cls, part).get("allowed")
        cls = _model_of(cls.model_fields[part].annotation)
    return None


def _model_of(annotation) -> type[BaseModel] | None:
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


class KeyedError(ValueError):
    """A check across fields whose error belongs to one key below the model that finds it
    (``KeyedError("data_dir", …)`` raised by the utility settings is reported at ``utility.data_dir``)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _keyed(err: dict) -> tuple:
    """The error's location, extended by a :class:`KeyedError`'s key."""
    cause = (err.get("ctx") or {}).get("error")
    loc = tuple(err["loc"])
    if isinstance(cause, KeyedError):
        loc += tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", cause.key) if p)
    return loc


def describe_error(err: dict, cls: type[BaseModel] | None = None) -> str:
    """One pydantic error as words: what was given and what would be accepted."""
    kind, ctx, given = err["type"], err.get("ctx") or {}, err.get("input")
    allowed = _allowed_for(cls, tuple(err["loc"]))
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in ("float_parsing", "float_type"):
        return f"expected a number, got {_show(given)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"expected an integer, got {_show(given)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"expected true or false, got {_show(given)}"
    if kind in ("string_type",):
        return f"expected a string, got {_show(given)}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {_show(given)}"
    if kind in ("model_type", "dataclass_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_show(given)}"
    if kind == "literal_error":
        return f"got {_show(given)}; allowed: {ctx.get('expected', '').replace(' or ', ', ').replace(chr(39), '')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") or allowed:
        bound = {"greater_than": "> {gt}", "greater_than_equal": "≥ {ge}", "less_than": "< {lt}",
                 "less_than_equal": "≤ {le}"}.get(kind, "")
        words = allowed or f"a value {bound.format(**ctx)}"
        return f"got {_show(given)}; allowed: {words}"
    msg = str(err.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def validation_message(e: ValidationError, cls: type[BaseModel] | None = None, name=location) -> str:
    """Every error of ``e`` on one line each, keyed by ``name(loc)`` (a config key or a flag)."""
    lines = []
    for err in e.errors():
        loc = _keyed(err)
        where = name(loc)
        text = describe_error(err, cls)
        if err["type"] == "extra_forbidden" and cls is not None:
            parent = _model_at(cls, loc[:-1])
            if parent is not None:
                text += "; allowed keys here: " + ", ".join(
                    n for n in parent.model_fields if field_extra(parent, n).get("yaml", True))
        if not loc:
            lines.append(text)
        else:
            lines.append(f"key '{where}': {text}" if name is location else f"{where}: {text}")
    return "; ".join(dict.fromkeys(lines))


def _model_at(cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    for part in loc:
        if isinstance(part, int):
            continue
        if cls is None or part not in cls.model_fields:
            return None
        cls = _model_of(cls.model_fields[part].annotation)
    return cls


def validate(cls: type[T], data: Any, source: str = "") -> T:
    """``cls`` from plain data, or a :class:`UserError` naming ``source`` and every bad key."""
    token = _DEPTH.set(_DEPTH.get() + 1)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        prefix = f"{source}: " if source else ""
        raise UserError(prefix + validation_message(e, cls)) from None
    finally:
        _DEPTH.reset(token)


def as_list(value: Any) -> Any:
    """A scalar where a list is expected is a one-item list (``stop: mean``, ``seeds: 42``)."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    return [value]
