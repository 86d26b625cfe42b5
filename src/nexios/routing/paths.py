"""The path compiler shared by HTTP and WebSocket routes.

A path template such as ``/rooms/{room}/files/{rest:path}`` becomes a regular
expression, a format string for ``url_path_for`` and the convertor of each parameter.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from nexios.exceptions import ImproperlyConfigured

__all__ = [
    "CONVERTORS",
    "CompiledPath",
    "Convertor",
    "compile_path",
    "register_convertor",
]


class Convertor:
    """Turns one path segment into a Python value and back."""

    name: ClassVar[str]
    regex: ClassVar[str]

    def convert(self, value: str) -> Any:
        raise NotImplementedError

    def to_string(self, value: Any) -> str:
        raise NotImplementedError


class StringConvertor(Convertor):
    name = "str"
    regex = "[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        text = str(value)
        if not text or "/" in text:
            raise ValueError(f"{text!r} is not a valid path segment (empty, or contains '/').")
        return text


class PathConvertor(Convertor):
    name = "path"
    regex = ".*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: Any) -> str:
        return str(value)


class IntegerConvertor(Convertor):
    name = "int"
    regex = "[0-9]+"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: Any) -> str:
        number = int(value)
        if number < 0:
            raise ValueError(f"{number} is negative: the int convertor matches only digits.")
        return str(number)


class FloatConvertor(Convertor):
    name = "float"
    regex = r"[0-9]+(?:\.[0-9]+)?"

    def convert(self, value: str) -> float:
        number = float(value)
        if math.isinf(number):
            raise ValueError(f"{value[:20]}... is too large for a float.")
        return number

    def to_string(self, value: Any) -> str:
        number = float(value)
        if number < 0 or math.isnan(number) or math.isinf(number):
            raise ValueError(f"{number} cannot be written in a path by the float convertor.")
        # Every digit of the shortest repr, without an exponent (the regex has none).
        text = format(Decimal(repr(number)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text


class UUIDConvertor(Convertor):
    name = "uuid"
    regex = "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

    def convert(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)

    def to_string(self, value: Any) -> str:
        return str(value)


CONVERTORS: dict[str, Convertor] = {
    c.name: c()
    for c in (StringConvertor, PathConvertor, IntegerConvertor, FloatConvertor, UUIDConvertor)
}


def register_convertor(name: str, convertor: Convertor) -> None:
    """Make ``{param:name}`` available in every path compiled from now on."""
    CONVERTORS[name] = convertor


_PARAM = re.compile(r"{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-zA-Z_][a-zA-Z0-9_]*))?}")


@dataclass(frozen=True, slots=True)
class CompiledPath:
    template: str
    regex: re.Pattern[str]
    format: str
    convertors: dict[str, Convertor]

    def match(self, path: str) -> dict[str, Any] | None:
        """The converted parameters if ``path`` matches the whole template, else None."""
        found = self.regex.match(path)
        if found is None:
            return None
        if not self.convertors:
            return {}
        try:
            return {
                name: self.convertors[name].convert(value)
                for name, value in found.groupdict().items()
            }
        except ValueError:
            # e.g. a float too large, or an invalid UUID that passed the regex
            return None

    def match_prefix(self, path: str) -> tuple[dict[str, Any], str] | None:
        """Match the template as a prefix that ends on a segment boundary.

        Returns the parameters and the rest of the path (``""`` or starting with ``/``).
        """
        found = self.regex.match(path)
        if found is None:
            return None
        rest = path[found.end() :]
        if rest and not rest.startswith("/"):
            return None
        try:
            params = {
                name: self.convertors[name].convert(value)
                for name, value in found.groupdict().items()
            }
        except ValueError:
            return None
        return params, rest

    def format_path(self, params: dict[str, Any]) -> str:
        missing = set(self.convertors) - set(params)
        if missing:
            raise KeyError(
                f"Path {self.template!r} needs the parameter(s) {', '.join(sorted(missing))}."
            )
        values = {name: conv.to_string(params[name]) for name, conv in self.convertors.items()}
        return self.format.format(**values)


def compile_path(template: str, *, prefix: bool = False) -> CompiledPath:
    """Compile a path template.

    With ``prefix=True`` the expression matches the start of a path only, and
    ``match_prefix`` must be used; a trailing ``/`` in the template is ignored so that
    ``/chat`` and ``/chat/`` are the same prefix.
    """
    if template and not template.startswith("/"):
        raise ImproperlyConfigured(f"Route paths must start with '/': got {template!r}.")
    if prefix:
        template = template.rstrip("/")
    pattern = "^"
    fmt = ""
    convertors: dict[str, Convertor] = {}
    position = 0
    for found in _PARAM.finditer(template):
        name, conv_name = found.group(1), found.group(2) or "str"
        if conv_name not in CONVERTORS:
            known = ", ".join(sorted(CONVERTORS))
            raise ImproperlyConfigured(
                f"Unknown convertor {conv_name!r} in {template!r}: use one of {known}, "
                "or add one with nexios.routing.register_convertor()."
            )
        if name in convertors:
            raise ImproperlyConfigured(f"Duplicate parameter {name!r} in path {template!r}.")
        literal = template[position : found.start()]
        pattern += re.escape(literal) + f"(?P<{name}>{CONVERTORS[conv_name].regex})"
        fmt += literal.replace("{", "{{").replace("}", "}}") + "{" + name + "}"
        convertors[name] = CONVERTORS[conv_name]
        position = found.end()
    tail = template[position:]
    pattern += re.escape(tail)
    fmt += tail.replace("{", "{{").replace("}", "}}")
    if not prefix:
        pattern += r"\Z"  # not "$", which also matches before a final newline
    # DOTALL: a {rest:path} parameter may hold any character, newlines included.
    return CompiledPath(template, re.compile(pattern, re.DOTALL), fmt, convertors)
