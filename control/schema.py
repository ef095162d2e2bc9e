"""Request bodies and query strings checked against declared shapes before a handler acts.

A shape is data: frozen spec objects (`Int`, `Num`, `Str`, `Parsed`, `NumOrText`, `OneOf`, `Bool`,
`ListOf`, `MapOf`, `Obj`) that one walker, `check`, applies. `Body` ties an object spec
to the TypedDict handlers get back, so no handler reads `body.get(...)` as Any.

Rules kept here:
  * malformed input is a 400 (`BadRequest`): not UTF-8, not JSON, NaN/Infinity (not
    JSON), not an object, or nested deeper than MAX_DEPTH levels. Depth is measured on
    the raw bytes before parsing and without recursion, because Python's json module
    recurses and raises RecursionError at about 1,000 levels;
  * well-formed but wrong input is a 422 (`Unprocessable`) naming the field:
    `instances: must be an integer between 0 and 100, got 2.7`;
  * nothing is coerced: a bool is not a number, 2.7 and 2.0 are not integers, "5" is not
    a number, a number too large for a float (1e400) is out of every range;
  * every string is valid UTF-8 (no lone surrogates) and has no NUL byte, unless its
    spec says otherwise (log lines carry whatever a program printed);
  * an optional field given as null is absent (clients send null for "not given");
  * an object refuses keys its spec does not declare, except messages from other roles
    (`extra="ignore"`), which drop them so a newer node can talk to this control plane.
"""

# No `from __future__ import annotations`: Body reads its TypedDict's required keys,
# which Python 3.11 loses from postponed annotations.

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast

from control.errors import BadRequest, Unprocessable

MAX_DEPTH = 32  # our deepest body nests 4 levels (a heartbeat's instances)
T = TypeVar("T")


@dataclass(frozen=True)
class Int:
    """A JSON integer (never a bool or a float) in [lo, hi]."""

    lo: int
    hi: int


@dataclass(frozen=True)
class Num:
    """A finite JSON number (int or float, never a bool) in [lo, hi], as a float."""

    lo: float
    hi: float


@dataclass(frozen=True)
class Str:
    """A string of min_len..max_len characters; `problem` says what else is wrong with it."""

    max_len: int
    min_len: int = 0
    problem: Callable[[str], str | None] | None = None
    nul: bool = False  # whether NUL characters are allowed


@dataclass(frozen=True)
class Parsed:
    """A string turned into a value by `parse`, whose ValueError gives the reason."""

    parse: Callable[[str], object]
    max_len: int = 200


@dataclass(frozen=True)
class NumOrText:
    """A number checked by `num`, or a string read by `text` (seconds, or "90s")."""

    num: Num
    text: Parsed


@dataclass(frozen=True)
class OneOf:
    """One of a few strings."""

    values: tuple[str, ...]


@dataclass(frozen=True)
class Bool:
    """true or false."""


@dataclass(frozen=True)
class ListOf:
    item: "Spec"
    max_items: int
    min_items: int = 0


@dataclass(frozen=True)
class MapOf:
    """An object with keys checked by `key` and values by `value`."""

    key: Str
    value: "Spec"
    max_items: int


@dataclass(frozen=True)
class Field:
    spec: "Spec"
    required: bool = False


@dataclass(frozen=True)
class Obj:
    """An object with declared fields; other keys are refused (or dropped: `ignore`)."""

    fields: Mapping[str, Field]
    extra: Literal["refuse", "ignore"] = "refuse"


Spec = Int | Num | Str | Parsed | NumOrText | OneOf | Bool | ListOf | MapOf | Obj


def req(spec: Spec) -> Field:
    return Field(spec, required=True)


def opt(spec: Spec) -> Field:
    return Field(spec)


@dataclass(frozen=True)
class Body(Generic[T]):
    """An object spec and the TypedDict it yields; their keys must agree."""

    shape: type[T]
    spec: Obj = field(repr=False)

    def __post_init__(self) -> None:
        hints = cast(Any, self.shape)
        required = {k for k, f in self.spec.fields.items() if f.required}
        if set(self.spec.fields) != set(hints.__annotations__) or required != set(
            hints.__required_keys__
        ):
            raise TypeError(f"{self.shape.__name__}: spec and TypedDict disagree on keys")


# --- the walker ---------------------------------------------------------------------


def validate(body: Body[T], value: object, where: str = "") -> T:
    """`value` checked against `body` (Unprocessable naming the field otherwise)."""
    return cast(T, check(body.spec, value, where))


def check(spec: Spec, value: object, where: str) -> object:
    """`value` if it fits `spec` (objects lose dropped keys and nulls), else Unprocessable."""
    if isinstance(spec, Obj):
        return _object(spec, value, where)
    if isinstance(spec, ListOf):
        if not isinstance(value, list):
            raise _wrong(where, "must be a list", value)
        if not spec.min_items <= len(value) <= spec.max_items:
            raise _wrong(where, _count("items", spec.min_items, spec.max_items), value)
        return [check(spec.item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(spec, MapOf):
        if not isinstance(value, dict):
            raise _wrong(where, "must be an object", value)
        if len(value) > spec.max_items:
            raise _wrong(where, f"must have at most {spec.max_items} keys", value)
        return {
            check(spec.key, k, where): check(spec.value, v, _at(where, k)) for k, v in value.items()
        }
    return _scalar(spec, value, where)


def _object(spec: Obj, value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _wrong(where or "body", "must be a JSON object", value)
    unknown = [k for k in value if k not in spec.fields]
    if unknown and spec.extra == "refuse":
        known = ", ".join(spec.fields)
        raise Unprocessable(f"{_at(where, unknown[0])}: unknown field (known: {known})")
    out: dict[str, object] = {}
    for key, f in spec.fields.items():
        if value.get(key) is None:
            if f.required:
                raise Unprocessable(f"{_at(where, key)}: is required")
            continue
        out[key] = check(f.spec, value[key], _at(where, key))
    return out


def _scalar(spec: Spec, value: object, where: str) -> object:
    if isinstance(spec, Int):
        if type(value) is not int or not spec.lo <= value <= spec.hi:
            raise _wrong(where, _rule(spec), value)
        return value
    if isinstance(spec, Num):
        if (
            type(value) not in (int, float)
            or not math.isfinite(cast(float, value))
            or not spec.lo <= cast(float, value) <= spec.hi
        ):
            raise _wrong(where, _rule(spec), value)
        return float(cast(float, value))
    if isinstance(spec, Bool):
        if not isinstance(value, bool):
            raise _wrong(where, "must be true or false", value)
        return value
    if isinstance(spec, OneOf):
        if not isinstance(value, str) or value not in spec.values:
            raise _wrong(where, f"must be one of {', '.join(spec.values)}", value)
        return value
    if isinstance(spec, NumOrText):
        return _scalar(spec.text if isinstance(value, str) else spec.num, value, where)
    if isinstance(spec, Parsed):
        text = _text(Str(spec.max_len), value, where)
        try:
            return spec.parse(text)
        except ValueError as e:
            raise Unprocessable(f"{where}: {e}") from None
    assert isinstance(spec, Str)
    return _text(spec, value, where)


def _text(spec: Str, value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong(where, "must be a string", value)
    if not spec.min_len <= len(value) <= spec.max_len:
        raise _wrong(where, _count("characters", spec.min_len, spec.max_len), value)
    if not spec.nul and "\0" in value:
        raise Unprocessable(f"{where}: must not contain NUL characters")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise Unprocessable(f"{where}: must be valid Unicode (no lone surrogates)") from None
    problem = spec.problem(value) if spec.problem else None
    if problem:
        raise Unprocessable(f"{where}: {problem}")
    return value


def _rule(spec: Int | Num) -> str:
    if isinstance(spec, Int):
        return f"must be an integer between {spec.lo} and {spec.hi}"
    return f"must be a number between {spec.lo:g} and {spec.hi:g}"


def _count(what: str, lo: int, hi: int) -> str:
    return f"must have at most {hi} {what}" if lo == 0 else f"must have {lo} to {hi} {what}"


def _at(where: str, key: object) -> str:
    return f"{where}.{key}" if where else str(key)


def _wrong(where: str, rule: str, value: object) -> Unprocessable:
    return Unprocessable(f"{where}: {rule}, got {shown(value)}")


def shown(value: object) -> str:
    """A refused value as a message shows it: short, and never a whole body."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "a number too large to represent"
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else f"a {len(text)}-digit number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = repr(value)
    return text if len(text) <= 60 else text[:50] + f"... ({len(str(value))} characters)"


# --- parsing the bytes --------------------------------------------------------------

_NOT_BRACKETS = bytes(range(256)).translate(None, b'[]{}"')


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text `raw` nests deeper than `limit` (or its brackets do not
    match): measured without recursion or a Python loop per byte."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # A backslash escapes exactly one character, so dropping \\ pairs and then \" leaves
    # only the quotes that open and close strings; brackets between them are text.
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_BRACKETS)
    brackets = b"".join(plain.split(b'"')[::2])
    for _ in range(limit):  # each round removes the innermost level
        inner = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if inner == brackets:
            break
        brackets = inner
    return bool(brackets)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, what: str) -> object:
    """`raw` as a JSON value; BadRequest naming `what` when it is not one we take."""
    if too_deep(raw):
        raise BadRequest(f"{what} nests deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:  # backstop: the depth check above should have caught it
        raise BadRequest(f"{what} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # bad JSON, bad UTF-8, an integer of more than 4300 digits
        raise BadRequest(f"{what} is not valid JSON") from None


# --- query strings ------------------------------------------------------------------

_INT_TEXT = re.compile(r"-?[0-9]{1,19}")
_NUM_TEXT = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")


def query(spec: Spec, params: Mapping[str, str], key: str) -> object:
    """Query parameter `key` (present in `params`) read as `spec` says: numbers must be
    plain decimals (no '1e3', 'nan', ' 5', '1_000'); Unprocessable otherwise."""
    text = params[key]
    if isinstance(spec, Int | Num):
        pattern = _INT_TEXT if isinstance(spec, Int) else _NUM_TEXT
        if not pattern.fullmatch(text):
            raise _wrong(key, _rule(spec), text)
        return check(spec, int(text) if isinstance(spec, Int) else float(text), key)
    return check(spec, text, key)
