"""An offline Hugging Face cache with ``openai/clip-vit-large-patch14``'s tokenizer and config.

    python tools/hosts/make_hf_cache.py --clip <openai CLIP source> --hf-home webui-hosts/hf

A1111 calls ``CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")`` (and reads the
model's config.json). With ``HF_HOME`` pointing at the folder written here and
``HF_HUB_OFFLINE=1`` that works without a network: vocab.json and merges.txt are derived from the
BPE vocabulary the ``clip`` package ships, exactly as its ``SimpleTokenizer`` builds its table.
No weights are written (the checkpoint brings them). Standard library only.
"""
import argparse
import gzip
import json
from pathlib import Path

REPO = "openai/clip-vit-large-patch14"
REVISION = "0" * 40  # any name: refs/main points at it

SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
           "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
TEXT_CONFIG = {
    "model_type": "clip_text_model", "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
    "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}
VISION_CONFIG = {
    "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
    "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 224, "patch_size": 14,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": 768,
}


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def vocab_and_merges(bpe_gz: Path):
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(vocab)}, merges


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", required=True, help="the openai CLIP source tree (clip/bpe_simple_vocab_16e6.txt.gz)")
    parser.add_argument("--hf-home", required=True)
    args = parser.parse_args()
    vocab, merges = vocab_and_merges(Path(args.clip) / "clip" / "bpe_simple_vocab_16e6.txt.gz")
    assert len(vocab) == 49408, len(vocab)
    repo_dir = Path(args.hf_home) / "hub" / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(REVISION)
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "special_tokens_map.json": json.dumps(SPECIAL, indent=2),
        "tokenizer_config.json": json.dumps({
            **SPECIAL, "add_prefix_space": False, "errors": "replace", "do_lower_case": True,
            "model_max_length": 77, "name_or_path": REPO, "tokenizer_class": "CLIPTokenizer"}, indent=2),
        "config.json": json.dumps({
            "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
            "logit_scale_init_value": 2.6592, "initializer_factor": 1.0,
            "text_config": TEXT_CONFIG, "vision_config": VISION_CONFIG}, indent=2),
        "preprocessor_config.json": json.dumps({
            "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_processor_type": "CLIPImageProcessor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "size": 224}, indent=2),
    }
    # transformers >= 4.22 migrates a cache without this file (and warns when offline)
    (Path(args.hf_home) / "hub" / "version.txt").write_text("1")
    for name, text in files.items():
        (snapshot / name).write_text(text, encoding="utf-8")
    print(f"wrote {REPO} ({', '.join(files)}) into {repo_dir}")


if __name__ == "__main__":
    main()
