"""modules/safe.py of A1111 v1.10.1, reduced: it replaces ``torch.load`` with a checker that
answers None (and explains only in the console) for a file it refuses.

The real checker also unpickles data.pkl with an allow-list; the stand-in keeps the part that
refuses files written by newer torch: zip members outside A1111's allowed names (torch >= 2.4
adds ``.format_version`` and ``.storage_alignment``).
"""
import re
import sys
import zipfile

import torch

ALLOWED_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")

unsafe_torch_load = torch.serialization.load


def check_pt(filename):
    if not zipfile.is_zipfile(filename):
        return
    with zipfile.ZipFile(filename) as archive:
        for name in archive.namelist():
            if not ALLOWED_ZIP_NAMES.match(name):
                raise Exception(f"bad file inside {filename}: {name}")


def load(filename, *args, **kwargs):
    from modules import shared

    try:
        if not getattr(shared.cmd_opts, "disable_safe_unpickle", False):
            check_pt(filename)
    except Exception as error:
        print(f"Error verifying pickled file from {filename}\nThe file may be malicious, so the program is not "
              f"going to read it.\nYou can skip this check with --disable-safe-unpickle commandline argument.\n\n"
              f"{error}", file=sys.stderr)
        return None
    return unsafe_torch_load(filename, *args, **kwargs)


def install():
    """What importing the real module does; the stand-in undoes it in ``uninstall`` when it closes."""
    torch.load = load


def uninstall():
    torch.load = unsafe_torch_load
