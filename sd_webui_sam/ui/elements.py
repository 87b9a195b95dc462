"""What the panel and its tabs share: element ids, the status line's HTML and the candidates' labels.

A module of its own so that ``panel`` (which builds the tabs) and the tabs import it alike,
instead of the tabs importing these back from ``panel``.
"""
from __future__ import annotations

import html

from sd_webui_sam.ui.handlers import CANDIDATE_COUNT

__all__ = ["CHOICES", "elem", "status_html", "unit_choices"]

#: The "Use mask" choices, one per candidate mask of an answer.
CHOICES = tuple(f"Mask {i + 1}" for i in range(CANDIDATE_COUNT))


def elem(prefix: str, name: str) -> str:
    """The ``elem_id`` of a panel element: unique per page as long as ``prefix`` is."""
    return f"{prefix}_{name}"


def status_html(message: str, *, error: bool = False) -> str:
    css = "sam-status-error" if error else "sam-status-ok"
    return f'<p class="{css}">{html.escape(message)}</p>' if message else ""


def unit_choices(units: int) -> list:
    """A ControlNet unit dropdown's choices: "0".."units-1" (one, hidden, without ControlNet)."""
    return [str(i) for i in range(max(units, 1))]
