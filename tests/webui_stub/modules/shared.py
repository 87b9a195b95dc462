import argparse

from modules import options, paths_internal, shared_state
from modules.options import OptionInfo  # noqa: F401
from modules.paths_internal import data_path, extensions_builtin_dir, extensions_dir, models_path, script_path  # noqa: F401

cmd_opts = argparse.Namespace(
    lowvram=False, medvram=False, medvram_sdxl=False, api=False, nowebui=False, api_auth=None, listen=False,
    port=None, device_id=None, use_cpu=[], no_half=False, disable_safe_unpickle=False, skip_install=False,
    data_dir=paths_internal.data_path, hide_ui_dir_config=False,
)
opts = options.Options(
    {
        "samples_format": OptionInfo("png"),
        "jpeg_quality": OptionInfo(80),
        "api_enable_requests": OptionInfo(True),
        "api_forbid_local_requests": OptionInfo(True),
        "api_useragent": OptionInfo(""),
        "samples_save": OptionInfo(True),
        "save_incomplete_images": OptionInfo(False),
        "samples_filename_pattern": OptionInfo(""),
        "save_images_add_number": OptionInfo(True),
        "save_to_dirs": OptionInfo(False),
        "grid_save_to_dirs": OptionInfo(True),
        "directories_filename_pattern": OptionInfo("[date]"),
        "enable_pnginfo": OptionInfo(True),
    },
    restricted_opts=set(),
)
state = shared_state.State()
sd_model = None
demo = None
device = None


def options_section(section_identifier, options_dict):
    for value in options_dict.values():
        value.section = section_identifier
    return options_dict
