"""Request bodies for the hub: JSON parsed once with bounded size, depth and numbers, then
read field by field with strict types, so bad input is a 400 naming the field; HTML forms
parsed once, before any handler, with a broken one a 400 too.

JSON is strict here: `"false"` is not a boolean, `1` is not `true`, NaN and Infinity are
not numbers, and a field the endpoint does not know is refused rather than ignored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, overload

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import BadRequest, HubError

MAX_BYTES = 1024 * 1024  # the API's largest real body (a few thousand user names) is ~100 KiB
MAX_DEPTH = 32  # no hub body nests more than 3 deep; 32 leaves room and bounds recursion
MAX_INT_DIGITS = 20  # int() of a long digit string is quadratic, and Python refuses > 4300
# A JSON string (skipped whole, escapes included) or one bracket: what depth counts.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class PayloadTooLarge(HubError):
    status = 413


def kind(value: object) -> str:
    """The JSON name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _depth(raw: bytes) -> int:
    depth = deepest = 0
    for m in _TOKENS.finditer(raw):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest


def _no_constant(name: str) -> Any:
    raise BadRequest(f"Request body is not valid JSON: {name} is not a JSON number.")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequest(f"Request body has a number with more than {MAX_INT_DIGITS} digits.")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"Request body has a number out of range: {text[:40]}.")
    return value


def _check_text(value: object) -> None:
    """Every string (keys too) must be storable text: a lone surrogate escape is not."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(
                "Request body has a string that is not valid Unicode (a lone surrogate escape)."
            ) from None
    elif isinstance(value, list):
        for item in value:
            _check_text(item)
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_text(k)
            _check_text(item)


def parse(raw: bytes) -> Any:
    """Bytes to a JSON value, or BadRequest/PayloadTooLarge saying what is wrong."""
    if len(raw) > MAX_BYTES:
        raise PayloadTooLarge(f"Request body is larger than {MAX_BYTES} bytes.")
    if _depth(raw) > MAX_DEPTH:
        raise BadRequest(f"Request body nests deeper than {MAX_DEPTH} levels.")
    try:
        value = json.loads(
            raw.decode("utf-8"), parse_constant=_no_constant, parse_int=_int, parse_float=_float
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest("Request body is not valid JSON (UTF-8).") from None
    _check_text(value)
    return value


async def read(request: web.Request) -> Fields:
    """The request's JSON object body; an empty body or `null` is an empty object."""
    if not request.can_read_body:
        return Fields({})
    if request.content_length is not None and request.content_length > MAX_BYTES:
        raise PayloadTooLarge(f"Request body is larger than {MAX_BYTES} bytes.")
    raw = await request.read()  # bounded by the app's client_max_size (a 413 past it)
    if not raw.strip():
        return Fields({})
    value = parse(raw)
    if value is None:
        return Fields({})
    if not isinstance(value, dict):
        raise BadRequest(f"Request body must be a JSON object, not {kind(value)}.")
    return Fields(value)


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def read_form(request: web.Request) -> dict[str, str]:
    """The request's form fields (aiohttp keeps the form, so later `request.post()` calls
    get it again without reading).

    aiohttp raises plain ValueError and friends for a multipart body without a boundary, an
    unknown charset, bytes that are not that charset or an unknown transfer encoding, and
    its HTTP errors for a part's bad headers; those are the client's mistakes, not the hub's.
    Hub pages take text fields only."""
    try:
        form = await request.post()
    except (ValueError, LookupError, RuntimeError, HttpProcessingError):
        raise BadRequest(
            "Request body is not a valid form "
            f"({request.content_type}, charset {request.charset or 'utf-8'})."
        ) from None
    fields = {}
    for key, value in form.items():
        if not isinstance(value, str):
            raise BadRequest("Form fields must be text: the hub takes no file uploads.")
        fields[key] = value
    return fields


class Fields:
    """A JSON object's fields, read by type. `null` counts as absent (JupyterHub's clients
    send `"expires_in": null` for "never"); any other wrong type is a 400 naming the field."""

    def __init__(self, data: dict[str, Any], where: str = "") -> None:
        self.data = data
        self.where = where

    def __contains__(self, key: str) -> bool:
        return self.data.get(key) is not None

    def __len__(self) -> int:
        return len(self.data)

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def allow(self, *keys: str) -> Fields:
        unknown = sorted(set(self.data) - set(keys))
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            known = ", ".join(keys) if keys else "none"
            raise BadRequest(
                f"Unknown field(s) {shown}{' in ' + self.where if self.where else ''}"
                f" (known: {known})."
            )
        return self

    def _get(self, key: str, types: tuple[type, ...], what: str) -> Any:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise BadRequest(f"{self._name(key)} must be {what}, not {kind(value)}.")
        return value

    @overload
    def boolean(self, key: str, default: bool) -> bool: ...
    @overload
    def boolean(self, key: str, default: None = None) -> bool | None: ...

    def boolean(self, key: str, default: bool | None = None) -> bool | None:
        value = self._get(key, (bool,), "true or false")
        return default if value is None else bool(value)

    def string(self, key: str, max_len: int = 1000) -> str | None:
        value: str | None = self._get(key, (str,), "a string")
        if value is not None and len(value) > max_len:
            raise BadRequest(f"{self._name(key)} must be at most {max_len} characters.")
        return value

    def number(self, key: str, low: float, high: float) -> float | None:
        value = self._get(key, (int, float), "a number")
        if value is not None and not low <= value <= high:
            raise BadRequest(f"{self._name(key)} must be between {low:g} and {high:g}.")
        return None if value is None else float(value)

    def strings(self, key: str, max_items: int = 1000, max_len: int = 1000) -> list[str] | None:
        value: list[Any] | None = self._get(key, (list,), "a list of strings")
        if value is None:
            return None
        if len(value) > max_items:
            raise BadRequest(f"{self._name(key)} may have at most {max_items} items.")
        for item in value:
            if not isinstance(item, str):
                raise BadRequest(
                    f"{self._name(key)} must be a list of strings, not one with {kind(item)}."
                )
            if len(item) > max_len:
                raise BadRequest(f"{self._name(key)} items must be at most {max_len} characters.")
        return value

    def object(self, key: str) -> Fields | None:
        value: dict[str, Any] | None = self._get(key, (dict,), "an object")
        return None if value is None else Fields(value, self._name(key))

    def objects(self, key: str) -> dict[str, Fields]:
        """An object whose values are all objects: {"": {...}, ...}."""
        outer = self.object(key)
        if outer is None:
            return {}
        return {k: v for k in outer.data if (v := outer.object(k)) is not None}
