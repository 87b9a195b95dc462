"""Reading checkpoint files: safe loading, and a clear refusal for every kind of bad file."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch

from sd_webui_sam import checkpoints
from sd_webui_sam.errors import CorruptCheckpointError, SamUserError, UnsafeCheckpointError
from tools.fixtures.sam_checkpoints import save_state_dict


class _RunsCommand:
    """A pickle payload that would create a file if unpickling ran it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _WritesFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.fixture
def tiny_state_dict(tiny_sam):
    path, _ = tiny_sam
    return torch.load(path, map_location="cpu", weights_only=True)


def _shapes(state_dict):
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def test_reads_official_layout_pth_and_safetensors_alike(tiny_sam, tiny_state_dict, tmp_path):
    path, _ = tiny_sam
    copy = save_state_dict(tiny_state_dict, tmp_path / "renamed_copy.safetensors")

    expected = _shapes(tiny_state_dict)
    assert checkpoints.read_shapes(path) == expected
    assert checkpoints.read_shapes(copy) == expected
    loaded = checkpoints.load_state_dict(copy)
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[name], tiny_state_dict[name]) for name in expected)


def test_wrapped_and_dataparallel_checkpoints_are_unwrapped(tiny_state_dict, tmp_path):
    wrapped = {"model": {f"module.{name}": tensor for name, tensor in tiny_state_dict.items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    torch.save({"state_dict": tiny_state_dict}, tmp_path / "state_dict.pt")
    for name in ("wrapped.pth", "state_dict.pt"):
        assert checkpoints.read_shapes(tmp_path / name) == _shapes(tiny_state_dict)
        loaded = checkpoints.load_state_dict(tmp_path / name)
        assert torch.equal(loaded["mask_decoder.iou_token.weight"], tiny_state_dict["mask_decoder.iou_token.weight"])


def test_legacy_non_zip_pickle_format_loads(tiny_state_dict, tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(tiny_state_dict, path, _use_new_zipfile_serialization=False)
    assert checkpoints.read_shapes(path) == _shapes(tiny_state_dict)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", [_RunsCommand, _WritesFile], ids=["os.system", "write_text"])
def test_pickle_that_would_run_code_is_refused_and_not_run(tmp_path, zip_format, payload):
    marker = tmp_path / "PWNED"
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1), "x": payload(marker)}, path, _use_new_zipfile_serialization=zip_format)

    for reader in (checkpoints.read_shapes, checkpoints.load_state_dict):
        with pytest.raises(UnsafeCheckpointError) as raised:
            reader(path)
        message = str(raised.value)
        assert "sam_vit_b_01ec64.pth" in message and "refused" in message
        assert "safetensors" in message  # says what to do instead
    assert not marker.exists()


def test_checkpoint_with_foreign_objects_is_refused(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UnsafeCheckpointError, match="argparse.Namespace"):
        checkpoints.load_state_dict(path)


def _truncate(source: Path, destination: Path, keep: float = 0.5) -> Path:
    data = source.read_bytes()
    destination.write_bytes(data[: int(len(data) * keep)])
    return destination


def test_damaged_files_are_reported_as_corrupt_with_the_file_name(tiny_sam, tiny_state_dict, tmp_path):
    path, _ = tiny_sam
    safetensors_copy = save_state_dict(tiny_state_dict, tmp_path / "full.safetensors")
    legacy = tmp_path / "legacy_full.pth"
    torch.save(tiny_state_dict, legacy, _use_new_zipfile_serialization=False)
    bad_files = {
        "truncated.pth": _truncate(path, tmp_path / "truncated.pth"),
        "truncated_legacy.pth": _truncate(legacy, tmp_path / "truncated_legacy.pth"),
        "truncated.safetensors": _truncate(safetensors_copy, tmp_path / "truncated.safetensors"),
        "empty.pth": tmp_path / "empty.pth",
        "readme.pth": tmp_path / "readme.pth",
        "noise.safetensors": tmp_path / "noise.safetensors",
        "plain_pickle.pt": tmp_path / "plain_pickle.pt",
        "no_tensors.pth": tmp_path / "no_tensors.pth",
    }
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "readme.pth").write_text("Put your SAM model here.\n" * 20)
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(4096))
    (tmp_path / "plain_pickle.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "no_tensors.pth")

    for name, bad in bad_files.items():
        for reader in (checkpoints.read_shapes, checkpoints.load_state_dict):
            with pytest.raises(CorruptCheckpointError) as raised:
                reader(bad)
            assert name in str(raised.value), (name, str(raised.value))
            assert not isinstance(raised.value, UnsafeCheckpointError)


def test_safetensors_with_data_cut_short_is_caught_from_the_header_alone(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}).encode()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 1000)
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        checkpoints.read_shapes(path)


def test_read_shapes_of_safetensors_reads_only_the_header(tmp_path):
    """A sparse file with a real header: shapes come back without touching (or allocating) data."""
    count = 256 * 1024 * 1024  # 1 GiB of float32 that is never read
    header = json.dumps({"big": {"dtype": "F32", "shape": [count], "data_offsets": [0, 4 * count]}}).encode()
    path = tmp_path / "sparse.safetensors"
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + 4 * count)
    assert checkpoints.read_shapes(path) == {"big": (count,)}


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(SamUserError):
        checkpoints.read_shapes(tmp_path / "nope.pth")


def test_check_shapes_names_the_wrong_tensors():
    expected = {"a.weight": (4, 4), "b.weight": (2,), "c": (1,)}
    found = {"a.weight": (4, 5), "b.weight": (2,), "d": (1,)}
    with pytest.raises(CorruptCheckpointError) as raised:
        checkpoints.check_shapes("model.pth", expected, found, "SAM ViT-B")
    message = str(raised.value)
    assert "model.pth" in message and "SAM ViT-B" in message
    assert "a.weight is (4, 5)" in message and "(4, 4)" in message
    assert "missing (c)" in message and "unexpected (d)" in message
    checkpoints.check_shapes("model.pth", expected, dict(expected), "SAM ViT-B")  # exact fit passes
