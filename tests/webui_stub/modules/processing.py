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
    do_not_save_samples: bool = False

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
        mask = create_binary_mask(self.image_mask) if self.image_mask is not None else None
        self.seen_by_init = {"init_images": list(self.init_images or []), "image_mask": mask}


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", index_of_first_image=0, infotexts=None):
        self.images = images_list
        self.seed = seed
        self.info = info
        self.index_of_first_image = index_of_first_image
        self.infotexts = infotexts or [info]


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
    from modules import images as images_module, scripts

    images = []
    infotexts = []
    for n in range(p.n_iter):
        if shared.state.interrupted:
            break
        p.iteration = n
        p.prompts = [p.prompt] * p.batch_size
        p.seeds = [p.seed + n * p.batch_size + i for i in range(p.batch_size)]
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=[p.subseed])
        save_samples = p.save_samples()
        for i in range(p.batch_size):
            p.batch_index = i
            image = Image.new("RGB", (p.width, p.height), (40 * i, 90, 160))
            if p.scripts is not None:
                if scripts.PostprocessImageArgs is not getattr(scripts, "_ForgePostprocessImageArgs", None):
                    pp = scripts.PostprocessImageArgs(image)
                else:
                    pp = scripts.PostprocessImageArgs(image, i + p.iteration * p.batch_size)
                p.scripts.postprocess_image(p, pp)
                image = pp.image
            text = f"{p.prompt}\nSeed: {p.seeds[i]}"
            if save_samples:
                images_module.save_image(image, p.outpath_samples, "", p.seeds[i], p.prompts[i],
                                         shared.opts.samples_format, info=text, p=p)
            infotexts.append(text)
            images.append(image)
    processed = Processed(p, images, p.seed, infotexts[0] if infotexts else "", infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, processed)
    return processed
