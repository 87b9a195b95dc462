"""One declared argument of a WebUI script: its name, kind, default, label and how a raw value is read.

Both of this extension's scripts declare their positional arguments once, as tuples of these
(``script_args`` for Segment Anything, ``detail_settings`` for Detail each object); their UI, the
parsing of ``*args`` and of ``alwayson_scripts`` values, infotext keys and X/Y/Z axes derive from them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

__all__ = ["ScriptArg"]


@dataclass(frozen=True)
class ScriptArg:
    name: str                       # the argument's name (API dict key, attribute of DetailSettings)
    kind: str                       # "bool" | "text" | "int" | "float" | "choice" | "model" | "picture"
    default: Any
    label: str                      # what the section shows
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    choices: Tuple[str, ...] = ()   # fixed choices ("choice"); empty: filled by the host (models, samplers)
    infotext: Optional[str] = None  # the infotext key; None: not written
    axis: bool = False              # offered as an X/Y/Z plot axis
    lines: int = 1                  # text boxes: visible lines
    info: str = ""                  # a hint under the component

    def parse(self, value: Any) -> Any:
        """``value`` from the UI (typed), the API (JSON, maybe strings) or an infotext (strings) as this
        setting's type; anything unusable means the default, numbers are clamped to the range."""
        if value is None:
            return self.default
        if self.kind == "picture":
            return value  # a PIL image or array (UI), a base64 string (API): read where it is used
        if self.kind == "model":
            return str(value) if value else None  # a file name; empty means "the default model"
        if self.kind == "bool":
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if self.kind == "text":
            return value if isinstance(value, str) else str(value)
        if self.kind == "choice":
            text = str(value).strip()
            if self.choices:
                for choice in self.choices:
                    if choice.lower() == text.lower():
                        return choice
                return self.default
            return text
        try:
            number = float(value)
        except (TypeError, ValueError):
            return self.default
        if not math.isfinite(number):
            return self.default
        if self.minimum is not None:
            number = max(float(self.minimum), number)
        if self.maximum is not None:
            number = min(float(self.maximum), number)
        return int(round(number)) if self.kind == "int" else number
