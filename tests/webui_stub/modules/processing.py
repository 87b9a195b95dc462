"""modules/processing.py of A1111 v1.10.1: fields and hook order, no diffusion."""
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from modules import infotext_utils, shared


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    sampler_name: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    extra_generation_params: dict = None
    override_settings: dict = None
    denoising_strength: float = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    subseed_strength: float = 0
    restore_faces: bool = None
    tiling: bool = None

    scripts_value: object = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)
    is_api: bool = field(default=False, init=False)

    def __post_init__(self):
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or {}

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def save_samples(self) -> bool:
        """Returns whether generated images need to be written to disk"""
        # Stand-in only: a p built without an output folder (most tests) saves nothing.
        if self.outpath_samples is None:
            return False
        opts, state = shared.opts, shared.state
        return opts.samples_save and not self.do_not_save_samples and (
            opts.save_incomplete_images or not state.interrupted and not state.skipped)

    def close(self):
        pass


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: object = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: object = None
    image_mask: object = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        self.seen_by_init = None

    @property
    def mask_blur(self):
        if self.mask_blur_x == self.mask_blur_y:
            return self.mask_blur_x
        return None

    @mask_blur.setter
    def mask_blur(self, value):
        if isinstance(value, int):
            self.mask_blur_x = value
            self.mask_blur_y = value

    def init(self, all_prompts, all_seeds, all_subseeds):
        # What the real init() reads: the images and the mask as they are at this moment.
        mask = create_binary_mask(self.image_mask, round=self.mask_round) if self.image_mask is not None else None
        self.seen_by_init = {"init_images": list(self.init_images or []), "image_mask": mask}
        self.paste_to = None
        self.mask_for_overlay = None
        if mask is None:
            return
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        if self.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
        for sigma, axis in ((self.mask_blur_x, 0), (self.mask_blur_y, 1)):
            if sigma > 0:  # the host blurs each axis with a Gaussian of that sigma
                size = 2 * int(2.5 * sigma + 0.5) + 1
                mask = Image.fromarray(cv2.GaussianBlur(np.array(mask), (size, 1) if axis == 0 else (1, size), sigma))
        self.mask_for_overlay = mask
        if self.inpaint_full_res:
            crop = get_crop_region_v2(mask, self.inpaint_full_res_padding)
            if crop:
                x1, y1, x2, y2 = expand_crop_region(crop, self.width, self.height, mask.width, mask.height)
                self.paste_to = (x1, y1, x2 - x1, y2 - y1)
                self.extra_generation_params["Inpaint area"] = "Only masked"
                self.extra_generation_params["Masked area padding"] = self.inpaint_full_res_padding
            else:
                self.inpaint_full_res = False

    def generate(self, index, color):
        """The stand-in's "sampling": a flat colour at width x height; with a mask, as the host's
        apply_overlay leaves it: pasted back into the crop (only masked) and the init image over it
        wherever the mask is 0, so pixels outside the mask are the init image's exactly."""
        sample = Image.new("RGB", (self.width, self.height), color)
        if self.mask_for_overlay is None or not self.init_images:
            return sample
        base = self.init_images[0].convert("RGB")
        if self.paste_to is not None:
            x, y, w, h = self.paste_to
            full = base.copy()
            full.paste(sample.resize((w, h)), (x, y))
        else:
            full = sample.resize(base.size)
        overlay = base.convert("RGBA")
        overlay.putalpha(ImageOps.invert(self.mask_for_overlay.convert("L")))
        composed = full.convert("RGBA")
        composed.alpha_composite(overlay)
        return composed.convert("RGB")


def get_crop_region_v2(mask, pad=0):
    """modules/masking.py: the mask's bounding box grown by ``pad``, inside the image; None if blank."""
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    return (max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.size[0]), min(y2 + pad, mask.size[1])) if pad else box


def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    """modules/masking.py: widen the region to the processing size's aspect, kept inside the image."""
    x1, y1, x2, y2 = crop_region
    if (x2 - x1) / (y2 - y1) > processing_width / processing_height:
        diff = int((x2 - x1) / (processing_width / processing_height) - (y2 - y1))
        y1, y2 = y1 - diff // 2, y2 + diff - diff // 2
        y1, y2 = _inside(y1, y2, image_height)
    else:
        diff = int((y2 - y1) * (processing_width / processing_height) - (x2 - x1))
        x1, x2 = x1 - diff // 2, x2 + diff - diff // 2
        x1, x2 = _inside(x1, x2, image_width)
    return x1, y1, x2, y2


def _inside(low, high, limit):
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        high, low = high - low, 0
    return low, min(high, limit)


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", index_of_first_image=0, infotexts=None):
        self.images = images_list
        self.seed = seed
        self.info = info
        self.index_of_first_image = index_of_first_image
        self.infotexts = infotexts or [info]


def create_binary_mask(image, round=True):
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1].convert("L")
        if round:
            image = image.point(lambda x: 255 if x > 128 else 0)
    else:
        image = image.convert("L")
    return image


def create_infotext(p, index):
    """The prompt, the negative prompt, then one line of "Key: value" pairs (extra_generation_params last)."""
    params = {"Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale, "Seed": p.seeds[index],
              "Size": f"{p.width}x{p.height}", **p.extra_generation_params}
    line = ", ".join(key if key == value else f"{key}: {infotext_utils.quote(value)}" for key, value in params.items()
                     if value is not None)
    negative = f"\nNegative prompt: {p.negative_prompts[index]}" if p.negative_prompts[index] else ""
    return f"{p.prompts[index]}{negative}\n{line}".strip()


def process_images(p):
    """before_process -> (override_settings) -> process -> init -> batches -> postprocess."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    if p.scripts is not None:
        p.scripts.process(p)
    from modules import images as images_module, scripts

    # As the hosts: Forge runs init and the batches (postprocess_image included) under
    # torch.inference_mode, so a model first loaded there has inference tensors for weights;
    # A1111 under torch.no_grad.
    with torch.inference_mode() if scripts.PLAYING_FORGE else torch.no_grad():
        images, infotexts = _init_and_batches(p, images_module, scripts)
    processed = Processed(p, images, p.seed, infotexts[0] if infotexts else "", infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed


def _init_and_batches(p, images_module, scripts):
    p.init([p.prompt], [p.seed], [p.subseed])
    images = []
    infotexts = []
    for n in range(p.n_iter):
        if shared.state.interrupted:
            break
        p.iteration = n
        p.prompts = [p.prompt] * p.batch_size
        p.negative_prompts = [p.negative_prompt] * p.batch_size
        p.seeds = [p.seed + n * p.batch_size + i for i in range(p.batch_size)]
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=[p.subseed])
        save_samples = p.save_samples()
        for i in range(p.batch_size):
            p.batch_index = i
            if isinstance(p, StableDiffusionProcessingImg2Img):
                image = p.generate(i, ((37 * p.seeds[i]) % 256, (40 * i) % 256, 200))
            else:
                image = Image.new("RGB", (p.width, p.height), (40 * i, 90, 160))
            if p.scripts is not None:
                if scripts.PLAYING_FORGE:
                    pp = scripts.PostprocessImageArgs(image, i + p.iteration * p.batch_size)
                else:
                    pp = scripts.PostprocessImageArgs(image)
                p.scripts.postprocess_image(p, pp)
                image = pp.image
            text = create_infotext(p, i)
            if save_samples:
                images_module.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i],
                                         shared.opts.samples_format, info=text, p=p)
            infotexts.append(text)
            images.append(image)
    return images, infotexts
