"""The script's arguments: one schema, README's table, and reading values by name."""
from __future__ import annotations

import json
import re
from pathlib import Path

from sd_webui_sam.script_args import ARG_NAMES, SCRIPT_ARGS, parse_script_args

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| (\d+) \| `(\w+)` \| (\w+) \| `([^`]*)` \| .+ \|$")


def readme_rows():
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Script arguments\n", 1)[1].split("\n## ", 1)[0]
    return [ROW.match(line).groups() for line in section.splitlines() if ROW.match(line)]


def test_readme_table_lists_the_schema_in_order_with_its_defaults():
    rows = readme_rows()
    assert [int(index) for index, *_ in rows] == list(range(len(SCRIPT_ARGS)))
    assert [(name, kind) for _, name, kind, _ in rows] == [(arg.name, arg.kind) for arg in SCRIPT_ARGS]
    # the default column is JSON, as an API caller would write it ("none" for null)
    defaults = [None if default == "none" else json.loads(default) for *_, default in rows]
    assert defaults == [arg.default for arg in SCRIPT_ARGS]


def test_values_are_read_by_name_and_missing_ones_take_the_defaults():
    assert len(ARG_NAMES) == 17 and len(set(ARG_NAMES)) == 17
    parsed = parse_script_args(["yes", "img", None, 1, "2", "off"])
    assert (parsed.use_for_generation, parsed.image, parsed.mask) == (True, "img", None)
    assert (parsed.controlnet_enabled, parsed.controlnet_unit, parsed.controlnet_invert) == (True, 2, False)
    assert parsed.handoff_wanted
    assert {name: parsed[name] for name in ARG_NAMES[6:]} == {arg.name: arg.default for arg in SCRIPT_ARGS[6:]}
    odd = parse_script_args([None] * 6 + [None, None, "", "", "nan", "-3", None, "x", ""])
    assert (odd.cutout_text, odd.cutout_sam_model, odd.cutout_dino_model) == ("", None, None)
    assert (odd.cutout_box_threshold, odd.cutout_text_threshold, odd.control_map_unit) == (0.3, 0.0, 0)
