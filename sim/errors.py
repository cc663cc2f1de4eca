"""Errors that reach the user as a message and exit status 2, never as a traceback."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


class SimInputError(Exception):
    """Bad input: a YAML typo, an impossible layout, a schedule precondition.

    The message names the field (dotted path) and what is allowed.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


def _allowed_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str] | None:
    """Follow ``loc`` through nested pydantic models and return the field names allowed at its end."""
    current: Any = model
    for part in loc[:-1]:
        if current is None or not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _model_in_annotation(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return None


def _model_in_annotation(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in_annotation(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, model: type[BaseModel] | None = None,
                            prefix: str = "") -> str:
    """One line per problem: ``field.path: what is wrong (what is allowed)``."""
    lines = []
    for e in err.errors():
        loc = tuple(e.get("loc", ()))
        path = ".".join(str(p) for p in loc)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        msg = e.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e.get("type") == "extra_forbidden":
            allowed = _allowed_keys(model, loc) if model else None
            msg = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif e.get("type") == "literal_error":
            expected = e.get("ctx", {}).get("expected")
            msg = f"got {e.get('input')!r}; allowed: {expected}"
        lines.append(f"{path}: {msg}" if path else msg)
    return "\n".join(lines)
