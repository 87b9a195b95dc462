"""The few places where pydantic 1 (A1111) and pydantic 2 (Forge) differ for our models.

Request models use only what both versions share: plain fields with explicit defaults,
``Field(default, ge=, le=, description=)`` and ``default_factory``. No validators, no
``regex=``/``pattern=``, no model config; checks the two versions would spell differently
are done by the route code instead.
"""
from __future__ import annotations

from typing import Any, Dict

import pydantic

PYDANTIC_V2 = pydantic.VERSION.startswith("2")


def model_to_dict(model: Any) -> Dict[str, Any]:
    """A request model as a plain dict (nested models become dicts too)."""
    if PYDANTIC_V2:
        return model.model_dump()
    return model.dict()


def model_fields(model_class: Any) -> Dict[str, Any]:
    """Field name -> field info, in both versions."""
    if PYDANTIC_V2:
        return dict(model_class.model_fields)
    return dict(model_class.__fields__)

