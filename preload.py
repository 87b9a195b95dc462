"""Command-line flags, added to the WebUI's parser before it parses (``preload(parser)``)."""


def preload(parser):
    parser.add_argument(
        "--sam-model-dir", type=str, default=None,
        help="Segment Anything: directory with SAM checkpoints (searched before models/sam).",
    )
    parser.add_argument(
        "--sam-device", type=str, default=None, choices=["auto", "cuda", "mps", "cpu"],
        help="Segment Anything: device for SAM (default: the setting, 'auto').",
    )
