"""The official checkpoints, and a resumable, verified download for any large file.

A download goes to ``<name>.part`` beside its destination (resumed with an HTTP Range request
after an interruption), is checked against the expected size and sha256, and only then renamed
into place. An existing file is never overwritten. Without network access the download fails
at once with a message that says which file to put where.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Tuple

from sd_webui_sam.errors import DownloadError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, Optional[int]], None]  # (bytes done, total bytes or None)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
CHUNK_BYTES = 1024 * 1024
PART_SUFFIX = ".part"
USER_AGENT = "sd-webui-sam-downloader/1.0"


@dataclass(frozen=True)
class CatalogueEntry:
    file_name: str
    url: str
    size: int  # bytes
    sha256: Optional[str]  # None: not published anywhere we could check; size is verified only
    label: str
    family: str
    variant: str


# Sizes and sha256 values are the Git LFS pointers (oid sha256 / size) of the same files on
# Hugging Face: lkeab/hq-sam for HQ-SAM (the authors' own repository); several independent
# mirrors that agree byte for byte for SAM (Meta publishes no hash; the 6-hex suffix of the SAM
# file names is not a sha256 prefix) and for MobileSAM.
CATALOGUE: Tuple[CatalogueEntry, ...] = (
    CatalogueEntry(
        "sam_vit_h_4b8939.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        2564550879, "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "SAM ViT-H", "sam", "vit_h",
    ),
    CatalogueEntry(
        "sam_vit_l_0b3195.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        1249524607, "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "SAM ViT-L", "sam", "vit_l",
    ),
    CatalogueEntry(
        "sam_vit_b_01ec64.pth", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        375042383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "SAM ViT-B", "sam", "vit_b",
    ),
    CatalogueEntry(
        "sam_hq_vit_h.pth", "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_h.pth",
        2570940653, "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35", "HQ-SAM ViT-H", "sam_hq", "vit_h",
    ),
    CatalogueEntry(
        "sam_hq_vit_l.pth", "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_l.pth",
        1254865805, "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343", "HQ-SAM ViT-L", "sam_hq", "vit_l",
    ),
    CatalogueEntry(
        "sam_hq_vit_b.pth", "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_b.pth",
        379335069, "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57", "HQ-SAM ViT-B", "sam_hq", "vit_b",
    ),
    CatalogueEntry(
        "sam_hq_vit_tiny.pth", "https://huggingface.co/lkeab/hq-sam/resolve/main/sam_hq_vit_tiny.pth",
        42526881, "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196", "HQ-SAM ViT-Tiny", "sam_hq", "tiny_vit",
    ),
    CatalogueEntry(
        "mobile_sam.pt", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        40728226, "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", "MobileSAM", "mobile_sam", "tiny_vit",
    ),
    # SAM 2.1 and SAM 2.0 from Meta's own download folders (092824, 072824). Meta publishes no hash
    # and the Hugging Face pointers (facebook/sam2.1-hiera-*, facebook/sam2-hiera-*) could not be read
    # from here, so the sha256 values are the ones public projects pin for Meta's files:
    # computational-cell-analytics/micro-sam micro_sam/v2/util.py (HASHES, which pooch checks on every
    # download: 2.1 today, 2.0 too in earlier versions), each value also pinned the same by other,
    # unrelated projects (e.g. a 3D Slicer SAM extension for the four 2.0 files). The sizes are the
    # byte counts public download scripts check, the same eight numbers in each (e.g. a MedSAM2
    # checkpoint script's EXPECTED_SIZE table).
    CatalogueEntry(
        "sam2.1_hiera_large.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt",
        898083611, "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", "SAM 2.1 Hiera-L", "sam2", "large",
    ),
    CatalogueEntry(
        "sam2.1_hiera_base_plus.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt",
        323606802, "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", "SAM 2.1 Hiera-B+", "sam2", "base_plus",
    ),
    CatalogueEntry(
        "sam2.1_hiera_small.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_small.pt",
        184416285, "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", "SAM 2.1 Hiera-S", "sam2", "small",
    ),
    CatalogueEntry(
        "sam2.1_hiera_tiny.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt",
        156008466, "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", "SAM 2.1 Hiera-T", "sam2", "tiny",
    ),
    CatalogueEntry(
        "sam2_hiera_large.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_large.pt",
        897952466, "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", "SAM 2 Hiera-L", "sam2", "large",
    ),
    CatalogueEntry(
        "sam2_hiera_base_plus.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_base_plus.pt",
        323493298, "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071", "SAM 2 Hiera-B+", "sam2", "base_plus",
    ),
    CatalogueEntry(
        "sam2_hiera_small.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_small.pt",
        184309650, "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3", "SAM 2 Hiera-S", "sam2", "small",
    ),
    CatalogueEntry(
        "sam2_hiera_tiny.pt", "https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_tiny.pt",
        155906050, "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", "SAM 2 Hiera-T", "sam2", "tiny",
    ),
)


def catalogue_entry(file_name: str, catalogue: Optional[Sequence[Any]] = None, kind: str = "checkpoint") -> Any:
    """The entry of ``catalogue`` (default: the SAM-family one; any entries with file_name, url,
    size and sha256) for ``file_name``."""
    catalogue = CATALOGUE if catalogue is None else catalogue
    for entry in catalogue:
        if entry.file_name == file_name:
            return entry
    known = ", ".join(entry.file_name for entry in catalogue)
    raise DownloadError(f"{file_name!r} is not an official {kind} this extension can download. Known files: {known}.")


def download_model(file_name: str, dest_dir: Path, progress: Optional[ProgressCallback] = None, **options) -> Path:
    """Download one catalogued checkpoint into ``dest_dir`` (a SAM model folder)."""
    entry = catalogue_entry(file_name)
    return download_file(entry.url, dest_dir, entry.file_name, size=entry.size, sha256=entry.sha256, progress=progress, **options)


def download_file(
    url: str,
    dest_dir: Path,
    file_name: str,
    *,
    size: Optional[int] = None,
    sha256: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
    console_progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest_dir/file_name``, resuming a previous ``.part``; returns the path.

    The finished file must have ``size`` bytes and the ``sha256`` hex digest when they are given.
    An existing identical file is returned as is; an existing different one is left alone and
    reported, never overwritten.
    """
    if not file_name or os.path.basename(file_name) != file_name or file_name in (".", ".."):
        raise DownloadError(f"Invalid file name {file_name!r} for a download.")
    dest_dir = Path(dest_dir)
    destination = dest_dir / file_name
    part = dest_dir / (file_name + PART_SUFFIX)
    expected_sha = sha256.lower() if sha256 else None

    if destination.exists():
        if _matches(destination, size, expected_sha):
            return destination
        raise DownloadError(
            f"{destination} already exists but is not the expected file "
            f"({'size' if size is not None and destination.stat().st_size != size else 'checksum'} differs). "
            "It was left untouched; move or rename it, then download again."
        )
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"Cannot create the folder {dest_dir} for {file_name}: {error}.") from error

    partial_file = _PartialFile.resume(part, size)
    bar = _console_bar(file_name, size, partial_file.done) if console_progress else None
    try:
        if size is None or partial_file.done < size:
            _fetch(url, partial_file, size, progress, bar, connect_timeout, read_timeout, file_name, dest_dir)
    finally:
        if bar is not None:
            bar.close()
    done, hasher = partial_file.done, partial_file.hasher

    if size is not None and done != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{file_name}: the server sent {done} bytes, expected {size}. The partial file was removed; try again.")
    if expected_sha is not None and hasher.hexdigest() != expected_sha:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{file_name} failed verification (sha256 {hasher.hexdigest()}, expected {expected_sha}); "
            f"the corrupt download was removed. Try again, or download {url} by hand into {dest_dir}."
        )
    if destination.exists():  # appeared while we were downloading (another tab, the user)
        raise DownloadError(f"{destination} appeared during the download and was left untouched; the new copy is at {part}.")
    os.replace(part, destination)
    logger.info("Downloaded %s to %s", file_name, destination)
    return destination


def _matches(path: Path, size: Optional[int], sha256: Optional[str]) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    if sha256 is not None:
        return file_sha256(path) == sha256
    return True


def file_sha256(path: Path) -> str:
    """sha256 of a whole file, read in chunks (the page cache holds it, not the process)."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(partial(handle.read, CHUNK_BYTES), b""):
            hasher.update(block)
    return hasher.hexdigest()


class _PartialFile:
    """The ``.part`` file, how many bytes it holds and their running sha256."""

    def __init__(self, path: Path):
        self.path = path
        self.done = 0
        self.hasher = hashlib.sha256()

    @classmethod
    def resume(cls, path: Path, size: Optional[int]) -> "_PartialFile":
        partial_file = cls(path)
        if path.exists():
            if size is not None and path.stat().st_size > size:
                path.unlink()  # larger than the real file: not a prefix of it
            else:
                with path.open("rb") as handle:
                    for block in iter(partial(handle.read, CHUNK_BYTES), b""):
                        partial_file.add(block)
        return partial_file

    def add(self, block: bytes) -> None:
        self.hasher.update(block)
        self.done += len(block)

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.done = 0
        self.hasher = hashlib.sha256()


def _fetch(url, partial_file: _PartialFile, size, progress, bar, connect_timeout, read_timeout, file_name, dest_dir) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    resumed_from = partial_file.done
    if resumed_from:
        request.add_header("Range", f"bytes={resumed_from}-")
    part = partial_file.path
    try:
        try:
            response = _opener(read_timeout).open(request, timeout=connect_timeout)
        except urllib.error.HTTPError as error:
            if error.code == 416 and resumed_from and resumed_from == size:
                return  # already complete; verification follows
            if error.code == 416:
                partial_file.restart()
                raise DownloadError(f"{file_name}: the server refused to resume; the partial file was removed, try again.") from error
            raise
        with response:
            total = _total_size(response, resumed_from)
            if resumed_from and response.status != 206:
                # The server ignored the Range request and sends the whole file: start over.
                partial_file.restart()
                if bar is not None:
                    bar.reset(total=total)
            if size is not None and total is not None and total != size:
                raise DownloadError(
                    f"{file_name}: the server offers {total} bytes but the official file has {size}; "
                    f"{url} does not serve the expected file, so the download was stopped."
                )
            total = total if total is not None else size
            with part.open("ab" if partial_file.done else "wb") as handle:
                _report(progress, partial_file.done, total)
                while True:
                    block = response.read(CHUNK_BYTES)
                    if not block:
                        break
                    handle.write(block)
                    partial_file.add(block)
                    if bar is not None:
                        bar.update(len(block))
                    _report(progress, partial_file.done, total)
            if total is not None and partial_file.done < total:
                raise http.client.IncompleteRead(b"", total - partial_file.done)
    except DownloadError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ssl.SSLError, ConnectionError, OSError) as error:
        kept = part.exists() and part.stat().st_size > 0
        raise DownloadError(
            f"Could not download {file_name} from {url} ({_reason(error)}). "
            f"Without internet access, download it on another machine and put {file_name} in {dest_dir}."
            + (f" The partial download ({part.name}) is kept and resumes next time." if kept else "")
        ) from error


def _total_size(response, done: int) -> Optional[int]:
    content_range = response.headers.get("Content-Range")
    if response.status == 206 and content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (done if response.status == 206 else 0)


def _report(progress: Optional[ProgressCallback], done: int, total: Optional[int]) -> None:
    if progress is not None:
        progress(done, total)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed before the end of the file"
    return str(error) or type(error).__name__


def _console_bar(file_name: str, total: Optional[int], initial: int):
    try:
        from tqdm import tqdm  # optional: a console bar only where it is installed
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=file_name, leave=False)


class _ReadTimeoutMixin:
    """Connect with the (short) connect timeout, then read with a longer one.

    A machine without network fails at once, while a slow mirror is not cut off mid-file.
    """

    read_timeout = READ_TIMEOUT_S

    def connect(self):
        super().connect()
        self.sock.settimeout(self.read_timeout)


class _HTTPConnection(_ReadTimeoutMixin, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ReadTimeoutMixin, http.client.HTTPSConnection):
    pass


def _opener(read_timeout: float) -> urllib.request.OpenerDirector:
    def with_timeout(connection_class):
        def factory(*args, **kwargs):
            connection = connection_class(*args, **kwargs)
            connection.read_timeout = read_timeout
            return connection

        return factory

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, request):
            return self.do_open(with_timeout(_HTTPConnection), request)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, request):
            return self.do_open(with_timeout(_HTTPSConnection), request, context=ssl.create_default_context())

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)
