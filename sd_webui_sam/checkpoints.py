"""Reading checkpoint files safely.

``.pth``/``.pt`` files are pickles; they are only ever unpickled with ``weights_only=True``, so
a file that would run code to unpack is refused instead of executed. ``.safetensors`` files
carry no code at all. Every way a file can be unusable ends in a :class:`SamUserError`
subclass whose message names the file and says what to do.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from sd_webui_sam.errors import CorruptCheckpointError, ModelNotFoundError, SamUserError, UnsafeCheckpointError

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
#: Keys under which training scripts commonly nest the weights.
WRAPPER_KEYS = ("model", "state_dict")
DATAPARALLEL_PREFIX = "module."
#: A safetensors header larger than this is not a real header (the format caps it at 100 MB).
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

#: A host that replaces ``torch.load`` with a checker of its own (AUTOMATIC1111's modules/safe.py)
#: answers None for a file it refuses, and says why only in its console.
_REFUSED_BY_HOST_CHECKER = (
    "{name} was refused by the WebUI's own checkpoint checker, which stands in for torch.load; its reason "
    "is in the WebUI console. This extension itself reads checkpoints with torch's weights-only loader, "
    "which runs no code. Save the weights as .safetensors, or start the WebUI with --disable-safe-unpickle."
)

Shapes = Dict[str, Tuple[int, ...]]
StateDict = Dict[str, torch.Tensor]

# Globals a plain tensor pickle refers to; anything else is code or a foreign object.
_LEGACY_PICKLE_COUNT = 4
_TENSOR_PICKLE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")


def is_checkpoint_name(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_SUFFIXES)


def unwrap_state_dict(obj: object, path: Optional[Path] = None) -> StateDict:
    """The flat ``{name: tensor}`` mapping inside what a checkpoint file held.

    Accepts a bare state dict, one nested under "model"/"state_dict", and a DataParallel
    "module." prefix on every key.
    """
    for _ in range(2):  # {"model": {"state_dict": ...}} exists in the wild; deeper does not
        if isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
            nested = next((obj[key] for key in WRAPPER_KEYS if isinstance(obj.get(key), Mapping)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, Mapping) or not obj:
        raise CorruptCheckpointError(f"{_name(path)} holds no model weights (found {_describe_object(obj)}).")
    tensors = {str(key): value for key, value in obj.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CorruptCheckpointError(f"{_name(path)} holds no tensors (found {_describe_object(obj)}).")
    if all(key.startswith(DATAPARALLEL_PREFIX) for key in tensors):
        tensors = {key[len(DATAPARALLEL_PREFIX):]: value for key, value in tensors.items()}
    return tensors


def unwrap_shapes(shapes: Mapping[str, Tuple[int, ...]]) -> Shapes:
    """The shapes view of :func:`unwrap_state_dict`, for the already-flat names of a safetensors header."""
    names = list(shapes)
    for wrapper in WRAPPER_KEYS:
        prefix = wrapper + "."
        if names and all(name.startswith(prefix) for name in names):
            shapes = {name[len(prefix):]: shape for name, shape in shapes.items()}
            names = list(shapes)
            break
    if names and all(name.startswith(DATAPARALLEL_PREFIX) for name in names):
        shapes = {name[len(DATAPARALLEL_PREFIX):]: shape for name, shape in shapes.items()}
    return {name: tuple(int(size) for size in shape) for name, shape in shapes.items()}


def read_shapes(path: Path) -> Shapes:
    """Tensor names and shapes, reading as little of the file as possible.

    safetensors: the JSON header only. Zip-format pickles: memory-mapped, so tensor data is
    not read. Raises the same errors as :func:`load_state_dict`.
    """
    path = Path(path)
    _check_regular_file(path)
    if path.suffix.lower() == ".safetensors":
        return unwrap_shapes(_safetensors_header_shapes(path))
    state_dict = _torch_load(path, mmap=True)
    return {name: tuple(tensor.shape) for name, tensor in state_dict.items()}


def load_state_dict(path: Path) -> StateDict:
    """All tensors of a checkpoint on the CPU, unwrapped to a flat state dict."""
    path = Path(path)
    _check_regular_file(path)
    if path.suffix.lower() == ".safetensors":
        _safetensors_header_shapes(path)  # clear errors for a truncated or foreign file first
        mapped = _safetensors_mapped(path)
        if mapped is not None:
            return unwrap_state_dict(mapped, path)
        from safetensors import SafetensorError  # optional: only a .safetensors checkpoint needs it
        from safetensors.torch import load_file  # optional: only a .safetensors checkpoint needs it

        try:
            return unwrap_state_dict(load_file(str(path), device="cpu"), path)
        except SafetensorError as error:
            raise CorruptCheckpointError(f"{path.name} is not a readable .safetensors file ({error}). {_REDOWNLOAD}") from error
    return _torch_load(path, mmap=True)


def sampled_fingerprint(path: Path, samples: int = 64, block: int = 4096) -> str:
    """sha256 of the file's size and of ``samples`` blocks spread evenly over it (a quarter MiB read).

    Cheap enough for every load; equal fingerprints only make two files candidates for being
    the same (two fine-tunes may differ only between the samples): a full sha256 decides.
    """
    size = Path(path).stat().st_size
    digest = hashlib.sha256(str(size).encode("ascii"))
    with open(path, "rb") as handle:
        for index in range(samples):
            handle.seek(max(0, (size - block) * index // max(1, samples - 1)))
            digest.update(handle.read(block))
    return digest.hexdigest()


def check_shapes(path_or_name: object, expected: Mapping[str, Tuple[int, ...]], found: Mapping[str, Tuple[int, ...]], label: str) -> None:
    """Raise CorruptCheckpointError unless ``found`` has exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(name for name in set(expected) & set(found) if tuple(expected[name]) != tuple(found[name]))
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if mismatched:
        shown = ", ".join(f"{name} is {tuple(found[name])} but {label} needs {tuple(expected[name])}" for name in mismatched[:3])
        problems.append(f"{len(mismatched)} tensor(s) of the wrong shape ({shown}{', ...' if len(mismatched) > 3 else ''})")
    if missing:
        problems.append(f"{len(missing)} missing ({_first(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    raise CorruptCheckpointError(
        f"{_name(path_or_name)} looks like {label} but does not fit it: {'; '.join(problems)}. "
        f"The file is damaged or was edited; {_REDOWNLOAD_LOWER}"
    )


_REDOWNLOAD = "Download it again (or remove it from the models folder)."
_REDOWNLOAD_LOWER = "download it again or remove it from the models folder."


def _name(path: object) -> str:
    if path is None:
        return "The checkpoint"
    return Path(str(path)).name


def _first(names: List[str], count: int = 3) -> str:
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def _is_tensor_mapping(obj: Mapping) -> bool:
    return any(isinstance(value, torch.Tensor) for value in obj.values())


def _describe_object(obj: object) -> str:
    if isinstance(obj, Mapping):
        keys = [str(key) for key in list(obj)[:5]]
        return f"a dict with keys {keys}" if keys else "an empty dict"
    return f"a {type(obj).__name__}"


def _check_regular_file(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist or is not a file.")
    if path.stat().st_size == 0:
        raise CorruptCheckpointError(f"{path.name} is empty (0 bytes), probably an interrupted download. {_REDOWNLOAD}")


def _safetensors_header_shapes(path: Path) -> Shapes:
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptCheckpointError(f"{path.name} is too short to be a .safetensors file. {_REDOWNLOAD}")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length == 0 or header_length > MAX_SAFETENSORS_HEADER or 8 + header_length > size:
            raise CorruptCheckpointError(f"{path.name} is not a valid .safetensors file (bad header length). {_REDOWNLOAD}")
        raw_header = handle.read(header_length)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptCheckpointError(f"{path.name} is not a valid .safetensors file (unreadable header). {_REDOWNLOAD}") from error
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path.name} is not a valid .safetensors file (header is not a table). {_REDOWNLOAD}")
    data_size = size - 8 - header_length
    shapes: Shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(dim) for dim in entry["shape"])
            _, end = (int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptCheckpointError(f"{path.name} has a malformed entry for {name!r}. {_REDOWNLOAD}") from error
        if end > data_size:
            raise CorruptCheckpointError(
                f"{path.name} is truncated: {name} ends at byte {end} of the data but the file only has {data_size}. {_REDOWNLOAD}"
            )
        shapes[name] = shape
    if not shapes:
        raise CorruptCheckpointError(f"{path.name} holds no tensors. {_REDOWNLOAD}")
    return shapes


def _safetensors_mapped(path: Path) -> Optional[StateDict]:
    """The tensors of a .safetensors file as views of one private memory map of it.

    Nothing is read until a tensor is used, and a model built on these tensors holds no other
    copy (the safetensors package's reader copies every tensor into memory). Pages are
    copy-on-write: nothing ever writes to the file. None for a dtype this reader does not know,
    so the caller falls back to the package's reader.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_length).decode("utf-8"))
    entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
    if any(entry.get("dtype") not in _SAFETENSORS_DTYPES for entry in entries.values()):
        return None
    file_bytes = torch.tensor([], dtype=torch.uint8).set_(torch.UntypedStorage.from_file(str(path), False, size))
    data_start = 8 + header_length
    tensors: StateDict = {}
    for name, entry in entries.items():
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        begin, end = (data_start + int(offset) for offset in entry["data_offsets"])
        shape = [int(dim) for dim in entry["shape"]]
        raw = file_bytes[begin:end]
        if begin % torch.empty(0, dtype=dtype).element_size():
            raw = raw.clone()  # a writer that did not align the data: this one tensor is copied
        tensors[name] = raw.view(dtype).reshape(shape)
    return tensors


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _torch_load(path: Path, *, mmap: bool) -> StateDict:
    """``torch.load`` restricted to tensors, with each failure turned into a user error."""
    with warnings.catch_warnings():
        # torch 2.1's weights-only unpickler trips its own TypedStorage deprecation warning.
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        return _torch_load_unwarned(path, mmap=mmap)


def _torch_load_unwarned(path: Path, *, mmap: bool) -> StateDict:
    try:
        if mmap and zipfile.is_zipfile(path):
            try:
                obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:
                # A zip directory that parses but whose records are damaged: retry plainly, so
                # the error below comes from the ordinary reader.
                if "mmap" not in str(error).lower():
                    raise
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _classify_unpickling_failure(path, error) from error
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, IndexError, struct.error, zipfile.BadZipFile) as error:
        raise CorruptCheckpointError(
            f"{path.name} is truncated or not a PyTorch checkpoint ({_short(error)}). {_REDOWNLOAD}"
        ) from error
    if obj is None and torch.load is not torch.serialization.load:
        raise UnsafeCheckpointError(_REFUSED_BY_HOST_CHECKER.format(name=path.name))
    return unwrap_state_dict(obj, path)


def _classify_unpickling_failure(path: Path, error: Exception) -> Exception:
    """Unsafe (a valid pickle asking for code or foreign objects) or corrupt (not a valid pickle)."""
    foreign = _foreign_globals(path)
    if foreign:
        return UnsafeCheckpointError(
            f"{path.name} was refused: unpacking it would import {', '.join(foreign[:3])}, which can run code. "
            "Only plain tensor checkpoints are loaded. Use the official file, or a .safetensors copy of it."
        )
    return CorruptCheckpointError(f"{path.name} is not a valid PyTorch checkpoint ({_short(error)}). {_REDOWNLOAD}")


def _foreign_globals(path: Path) -> List[str]:
    """Globals (module.name) a pickle refers to beyond what a tensor checkpoint needs.

    Read with pickletools only: nothing is imported or executed.
    """
    try:
        pickle_bytes = _pickle_bytes(path)
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    found: List[str] = []
    stream = io.BytesIO(pickle_bytes)
    # The legacy (non-zip) format is several pickles in a row; the tensor data that follows
    # the last one is not a pickle and ends the scan.
    for _ in range(_LEGACY_PICKLE_COUNT):
        recent_strings: List[str] = []
        start = stream.tell()
        try:
            for opcode, argument, _ in pickletools.genops(stream):
                if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    recent_strings = (recent_strings + [str(argument)])[-2:]
                elif opcode.name == "GLOBAL":
                    found.append(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(recent_strings) == 2:
                    found.append(".".join(recent_strings))
        except Exception:  # pickletools raises assorted errors on garbage: not a pickle (any more)
            break
        if stream.tell() == start:
            break
    foreign = [name for name in found if not name.startswith(_TENSOR_PICKLE_GLOBALS)]
    return list(dict.fromkeys(foreign))


def _pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next(name for name in archive.namelist() if name.endswith("data.pkl"))
            return archive.read(member)
    return path.read_bytes()[: 64 * 1024 * 1024]


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if len(text) < 12:  # bare codes such as KeyError(101) mean nothing on their own
        text = f"{type(error).__name__} {text}".strip()
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------- model file names (SAM and GroundingDINO folders)


def is_candidate_file(path: Path) -> bool:
    """A file that may be a checkpoint: right suffix, not hidden, not empty, a regular file.

    Partial downloads (``*.part``, ``*.tmp``, ``*.crdownload``) and notes (``*.txt``) fail the
    suffix test; ``.DS_Store`` and other dot files are hidden.
    """
    name = path.name
    if name.startswith(".") or not is_checkpoint_name(name):
        return False
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def validate_model_name(name: str) -> str:
    """A bare file name, or SamUserError: models are never addressed by path."""
    if not isinstance(name, str) or not name.strip():
        raise SamUserError("No SAM model selected. Choose a model from the list (or put one in the models/sam folder).")
    name = name.strip()
    if "/" in name or "\\" in name or name in (".", "..") or ".." in name.split(os.sep) or os.path.isabs(name) or ":" in name or "\0" in name:
        raise SamUserError(f"Invalid model name {name!r}: give a file name from the model list, not a path "
                           "(no folders, '..' or drive letters).")
    return name


def match_model_name(name: str, available: Sequence[str]) -> Optional[str]:
    """The listed file a user means: the exact name, else a unique case-insensitive match, else a unique stem."""
    if name in available:
        return name
    for same in (lambda m: m.lower() == name.lower(), lambda m: Path(m).stem.lower() == Path(name).stem.lower()):
        matches = [m for m in available if same(m)]
        if len(matches) == 1:
            return matches[0]
    return None
