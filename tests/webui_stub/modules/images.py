"""modules/images.py of A1111 v1.10.1, reduced to saving: save_image, FilenameGenerator, numbering.

The naming rules are the host's: ``[number]-<pattern><suffix>.<ext>`` with
``save_images_add_number`` (the default), ``<pattern><suffix>.<ext>`` without it (which writes
over a file of that name, as the real host does), ``forced_filename`` taken as is, and
``save_to_dirs`` putting files in a sub-folder named by ``directories_filename_pattern``.
"""
import os
import re

from modules import shared

invalid_filename_chars = '#<>:"/\\|?*\n\r\t'
invalid_filename_prefix = " "
invalid_filename_postfix = " ."
max_filename_part_length = 128


def sanitize_filename_part(text, replace_spaces=True):
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(x): "_" for x in invalid_filename_chars})
    text = text.lstrip(invalid_filename_prefix)[:max_filename_part_length]
    text = text.rstrip(invalid_filename_postfix)
    return text


class FilenameGenerator:
    def __init__(self, p, seed, prompt, image, zip=False, basename=""):
        self.p = p
        self.seed = seed
        self.prompt = prompt
        self.image = image
        self.zip = zip
        self.basename = basename
        self.replacements = {
            "seed": lambda: self.seed if self.seed is not None else "",
            "prompt": lambda: sanitize_filename_part(self.prompt),
            "prompt_spaces": lambda: sanitize_filename_part(self.prompt, replace_spaces=False),
            "prompt_words": lambda: " ".join([x for x in re.split(r"[\s,]+", self.prompt or "") if x][:8]) or "",
            "width": lambda: self.image.width,
            "height": lambda: self.image.height,
            "basename": lambda: self.basename,
        }

    def apply(self, x):
        res = ""
        for m in re.finditer(r"(\[([^\[\]<>]+)(<.+>)?\])", x):
            text, pattern = m.group(0), m.group(2)
            replacement = self.replacements.get(pattern.lower())
            if replacement is not None:
                value = replacement()
                x = x.replace(text, "" if value is None else str(value))
        res += x
        return res


def get_next_sequence_number(path, basename):
    result = -1
    if basename != "":
        basename = f"{basename}-"
    prefix_length = len(basename)
    for p in os.listdir(path):
        if p.startswith(basename):
            parts = os.path.splitext(p[prefix_length:])[0].split("-")
            try:
                result = max(int(parts[0]), result)
            except ValueError:
                pass
    return result + 1


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    opts = shared.opts
    namegen = FilenameGenerator(p, seed, prompt, image, basename=basename)
    if save_to_dirs is None:
        save_to_dirs = (grid and opts.grid_save_to_dirs) or (not grid and opts.save_to_dirs and not no_prompt)
    if save_to_dirs:
        dirname = namegen.apply(opts.directories_filename_pattern or "[prompt_words]").lstrip(" ").rstrip("\\ /")
        path = os.path.join(path, dirname)
    os.makedirs(path, exist_ok=True)

    if forced_filename is None:
        if short_filename or seed is None:
            file_decoration = ""
        elif opts.save_to_dirs:
            file_decoration = opts.samples_filename_pattern or "[seed]"
        else:
            file_decoration = opts.samples_filename_pattern or "[seed]-[prompt_spaces]"
        file_decoration = namegen.apply(file_decoration) + suffix
        add_number = opts.save_images_add_number or file_decoration == ""
        if file_decoration != "" and add_number:
            file_decoration = f"-{file_decoration}"
        if add_number:
            basecount = get_next_sequence_number(path, basename)
            fullfn = None
            for i in range(500):
                fn = f"{basecount + i:05}" if basename == "" else f"{basename}-{basecount + i:04}"
                fullfn = os.path.join(path, f"{fn}{file_decoration}.{extension}")
                if not os.path.exists(fullfn):
                    break
        else:
            fullfn = os.path.join(path, f"{file_decoration}.{extension}")
    else:
        fullfn = os.path.join(path, f"{forced_filename}.{extension}")

    image.save(fullfn)
    image.already_saved_as = fullfn
    return fullfn, None
