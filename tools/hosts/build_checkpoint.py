"""Write a random-weight Stable Diffusion 1.5 single-file checkpoint in the original layout.

    <host venv python> tools/hosts/build_checkpoint.py --ldm <stablediffusion repo> --out X.safetensors

The modules are the real ones, so names and shapes are exactly those of an SD 1.5 checkpoint:
the UNet and the VAE come from Stability's ``ldm`` package (the repository A1111 clones), with
the parameters of ``configs/v1-inference.yaml``; the text encoder is transformers'
``CLIPTextModel`` with the ViT-L/14 text configuration. Keys:
``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``.
Weights are seeded and small, and the layers that LDM initialises to zero get a small random
value, so that the UNet's output depends on its input and a generation stays finite.
"""
import argparse
import sys
import time

import torch

# configs/v1-inference.yaml (SD 1.x), model.params.unet_config.params
UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=768, use_checkpoint=False, legacy=False,
)
# model.params.first_stage_config.params
EMBED_DIM = 4
DDCONFIG = dict(
    double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
    num_res_blocks=2, attn_resolutions=[], dropout=0.0,
)
# openai/clip-vit-large-patch14, text model
CLIP_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)


class FirstStage(torch.nn.Module):
    """AutoencoderKL's parameters (its loss is an Identity) without pytorch_lightning."""

    def __init__(self):
        super().__init__()
        from ldm.modules.diffusionmodules.model import Decoder, Encoder

        self.encoder = Encoder(**DDCONFIG)
        self.decoder = Decoder(**DDCONFIG)
        self.quant_conv = torch.nn.Conv2d(2 * DDCONFIG["z_channels"], 2 * EMBED_DIM, 1)
        self.post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ldm", required=True, help="the stablediffusion repository (with ldm/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=0.5, help="factor on the random initialisation")
    args = parser.parse_args()
    sys.path.insert(0, args.ldm)
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    started = time.time()
    torch.manual_seed(args.seed)
    state = {}
    with torch.no_grad():
        for prefix, module in (
            ("model.diffusion_model.", UNetModel(**UNET)),
            ("first_stage_model.", FirstStage()),
            ("cond_stage_model.transformer.", CLIPTextModel(CLIPTextConfig(**CLIP_TEXT))),
        ):
            for name, tensor in module.state_dict().items():
                if tensor.is_floating_point():
                    tensor = tensor.float()
                    is_norm_weight = tensor.dim() == 1 and name.endswith("weight")
                    if tensor.dim() > 1 and not tensor.any():  # LDM's zero_module layers
                        tensor = torch.randn_like(tensor) * 1e-3
                    elif not is_norm_weight:
                        tensor = tensor * args.scale
                    tensor = tensor.half()
                state[prefix + name] = tensor.contiguous()
            del module
    position_ids = "cond_stage_model.transformer.text_model.embeddings.position_ids"
    if position_ids not in state:  # newer transformers keep it out of the state dict; SD 1.5 files have it
        state[position_ids] = torch.arange(CLIP_TEXT["max_position_embeddings"]).unsqueeze(0)
    tmp = args.out + ".tmp"
    save_file(state, tmp, metadata={"format": "pt", "note": "random weights, for tests only"})
    import os

    os.replace(tmp, args.out)
    count = sum(t.numel() for t in state.values())
    print(f"wrote {args.out}: {len(state)} tensors, {count / 1e6:.0f}M values, {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
