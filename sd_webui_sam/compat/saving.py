"""Saving the script's extra pictures next to the generated images, with the WebUI's own saver."""
from __future__ import annotations

import os
from typing import Any, Optional

from sd_webui_sam.compat.options import read_option

__all__ = ["save_beside_samples"]


def _free_stem(directory: str, stem: str, extension: str) -> str:
    """``stem``, or ``stem-1``, ``stem-2``... whichever names no existing file: nothing is written over."""
    candidate, number = stem, 0
    while os.path.exists(os.path.join(directory, f"{candidate}.{extension}")):
        number += 1
        candidate = f"{stem}-{number}"
    return candidate


def save_beside_samples(p: Any, image: Any, seed: Any, prompt: str, suffix: str, saved_beside: Optional[str] = None) -> str:
    """Save ``image`` with the WebUI's own ``modules.images.save_image``, as PNG (cut-outs have alpha).

    Beside the generated picture when it was saved (``<its name><suffix>.png``); otherwise in
    ``p.outpath_samples`` with the file-name pattern and ``suffix``, as the host names its own
    extra images ("-before-face-restoration"). Never replaces an existing file.
    """
    from modules import images, shared  # the WebUI's own modules: they exist only inside a host


    opts = shared.opts
    if saved_beside:
        directory = os.path.dirname(saved_beside)
        stem = _free_stem(directory, os.path.splitext(os.path.basename(saved_beside))[0] + suffix, "png")
        fullfn, _ = images.save_image(image, directory, "", seed, prompt, "png", p=p, forced_filename=stem,
                                      save_to_dirs=False)
        return fullfn
    path = p.outpath_samples
    if read_option(opts, "save_images_add_number", True):
        fullfn, _ = images.save_image(image, path, "", seed, prompt, "png", p=p, suffix=suffix)  # numbered: unique
        return fullfn
    # Without numbers save_image would reuse the name and write over the file: pick a free name first.
    namegen = images.FilenameGenerator(p, seed, prompt, image)
    save_to_dirs = bool(read_option(opts, "save_to_dirs", False))
    if save_to_dirs:
        pattern = read_option(opts, "directories_filename_pattern", "") or "[prompt_words]"
        path = os.path.join(path, namegen.apply(pattern).lstrip(" ").rstrip("\\ /"))
    decoration = read_option(opts, "samples_filename_pattern", "") or ("[seed]" if save_to_dirs else "[seed]-[prompt_spaces]")
    stem = _free_stem(path, namegen.apply(decoration) + suffix, "png")
    fullfn, _ = images.save_image(image, path, "", seed, prompt, "png", p=p, forced_filename=stem, save_to_dirs=False)
    return fullfn
