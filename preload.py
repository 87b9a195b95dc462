"""Command-line flags, added to the WebUI's parser before it parses (``preload(parser)``).

The WebUI loads this file by path, with the extension root not on ``sys.path``: the root is put
there only while ``sd_webui_sam`` is imported, as ``scripts/segment_anything.py`` does (torch is
already loaded by then in both hosts, so ``devices`` costs nothing).
"""
import sys
from pathlib import Path

EXTENSION_ROOT = str(Path(__file__).resolve().parent)
_added = EXTENSION_ROOT not in sys.path
if _added:
    sys.path.insert(0, EXTENSION_ROOT)
try:
    from sd_webui_sam.devices import DEVICE_CHOICES, PRECISION_CHOICES
finally:
    if _added:
        sys.path.remove(EXTENSION_ROOT)


def preload(parser):
    parser.add_argument(
        "--sam-model-dir", type=str, default=None,
        help="Segment Anything: directory with SAM checkpoints (searched before models/sam).",
    )
    parser.add_argument(
        "--sam-device", type=str, default=None, choices=list(DEVICE_CHOICES),
        help="Segment Anything: device for SAM (default: the setting, 'auto').",
    )
    parser.add_argument(
        "--sam-precision", type=str, default=None, choices=list(PRECISION_CHOICES),
        help="Segment Anything: precision of the image encoder (default: the setting, 'auto'; the decoder stays fp32).",
    )
