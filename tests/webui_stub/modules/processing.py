"""modules/processing.py of A1111 v1.10.1: fields and hook order, no diffusion."""
from dataclasses import dataclass, field

from PIL import Image

from modules import shared


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
        mask = create_binary_mask(self.image_mask) if self.image_mask is not None else None
        self.seen_by_init = {"init_images": list(self.init_images or []), "image_mask": mask}


class Processed:
    def __init__(self, p, images_list, seed=-1, info=""):
        self.images = images_list
        self.seed = seed
        self.info = info


def create_binary_mask(image, round=True):
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        image = image.split()[-1].convert("L").point(lambda x: 255 if x > 128 else 0)
    else:
        image = image.convert("L")
    return image


def process_images(p):
    """before_process -> (override_settings) -> process -> init -> batches -> postprocess."""
    if p.scripts is not None:
        p.scripts.before_process(p)
    if p.scripts is not None:
        p.scripts.process(p)
    p.init([p.prompt], [p.seed], [p.subseed])
    images = []
    for n in range(p.n_iter):
        if shared.state.interrupted:
            break
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=[p.prompt], seeds=[p.seed], subseeds=[p.subseed])
        images.append(Image.new("RGB", (p.width, p.height)))
    processed = Processed(p, images, p.seed, "")
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
