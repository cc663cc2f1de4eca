"""Errors that reach the user as a message, never as a traceback.

``SimInputError``: bad input, exit status 2, the message names the field. ``SimBugError``: the simulator
produced something impossible (an MFU above 100 %, a NaN or negative time); exit status 1 with a message that
asks for a bug report, never a result.
"""

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


class SimBugError(Exception):
    """An impossible result: a bug in the simulator, not in the input. The CLI exits 1 and asks for a report."""

    def __init__(self, message: str, context: str | None = None) -> None:
        self.context = context
        text = f"internal error (a simulator bug, not your input): {message}"
        if context:
            text += f"\n  while simulating {context}"
        super().__init__(text + "\n  please report it with the command line that produced it")


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
