"""Tiny random-weight diffusers pipelines, built entirely in code (no hub, no downloads).

Each builder creates the components with ``torch.manual_seed(0)`` (deterministic weights), wraps
them in the real pipeline class and ``save_pretrained``s it into a folder, so tests load them
through the real ``from_pretrained`` code path. Every model is a few MB and builds in well under a
second on CPU.

Native image sizes:
  * ``sd``, ``sdxl``: 64x64 (UNet sample_size 8, VAE scale factor 8), multiples of 8 work.
  * ``kandinsky22``: 64x64 (MoVQ scale factor 8), multiples of 8 work; the prior takes any image.
  * ``kandinsky3``: 64x64 (MoVQ scale factor 8); its pipelines round sides up to multiples of 64.
  * ``upscaler-x4``: any low-res image (32x32 is quick), x4 out (32x32 -> 128x128).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    KandinskyV22InpaintPipeline,
    KandinskyV22Pipeline,
    KandinskyV22PriorPipeline,
    PriorTransformer,
    StableDiffusionPipeline,
    StableDiffusionUpscalePipeline,
    StableDiffusionXLPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    VQModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

__all__ = [
    "make_clip_tokenizer",
    "build_sd",
    "build_sdxl",
    "build_kandinsky22",
    "build_kandinsky21",
    "build_kandinsky3",
    "make_t5_tokenizer",
    "make_xlm_roberta_tokenizer",
    "build_upscaler_x4",
    "build_controlnet",
    "build_depth_estimator",
    "build_kandinsky22_controlnet",
    "build_blip",
    "make_bert_tokenizer",
    "build_clip",
    "build_all",
    "TEXT_WIDTH",
]

#: width (hidden size == projection dim) of every tiny CLIP text/vision encoder.
TEXT_WIDTH = 32

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# A few common English letter pairs (then a few longer pieces built from them) as BPE merges.
_MERGES: list[tuple[str, str]] = [
    ("t", "h"), ("e", "r"), ("i", "n"), ("a", "n"), ("o", "n"), ("r", "e"), ("a", "t"),
    ("e", "n"), ("e", "s"), ("o", "r"), ("s", "t"), ("a", "r"),
    ("th", "e</w>"), ("a", "t</w>"), ("o", "g</w>"), ("d", "og</w>"), ("c", "at</w>"),
]


def _bytes_to_unicode() -> list[str]:
    """The GPT-2/CLIP byte-to-unicode table, in byte order (256 printable characters)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


def make_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with a hand-written ~540-token vocabulary.

    Layout like the real CLIP vocab: 256 byte characters, the same 256 + ``</w>``, one token per
    merge, then ``<|startoftext|>`` and ``<|endoftext|>`` last. Any text tokenizes (byte
    fallback), ``model_max_length`` is 77, padding uses ``<|endoftext|>`` (SD 1.x style).
    """
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars]
    for a, b in _MERGES:
        merged = a + b
        if merged not in tokens:
            tokens.append(merged)
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=list(_MERGES),
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        model_max_length=77,
    )


#: the layers of every tiny transformer encoder (CLIP text and vision, XLM-RoBERTa).
_ENCODER_LAYERS = dict(intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)

#: every tiny CLIP vision encoder (the Kandinsky prior's, the safety checker's): 32x32 images.
_VISION = dict(_ENCODER_LAYERS, hidden_size=TEXT_WIDTH, projection_dim=TEXT_WIDTH, image_size=32, patch_size=8)


def _text_encoder_sizes(tokenizer, width: int) -> dict:
    """What every tiny text encoder (CLIP text, XLM-RoBERTa) shares: two layers of four heads,
    ``width`` wide, over ``tokenizer``'s vocabulary and special token ids."""
    return dict(
        _ENCODER_LAYERS,
        vocab_size=len(tokenizer),
        hidden_size=width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _text_config(tokenizer: CLIPTokenizer, **overrides) -> CLIPTextConfig:
    kwargs = dict(
        _text_encoder_sizes(tokenizer, TEXT_WIDTH),
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
    )
    kwargs.update(overrides)
    return CLIPTextConfig(**kwargs)


#: what the tiny image autoencoders (SD's VAEs, Kandinsky's MoVQ) share: RGB in and out,
#: 4 latent channels, one layer a block.
_AUTOENCODER = dict(
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
)


def _vae(blocks: int, scaling_factor: float = 0.18215, **config) -> AutoencoderKL:
    channels = [16, 16, 32, 32][:blocks] if blocks <= 4 else [16] * blocks
    return AutoencoderKL(
        **_AUTOENCODER,
        **config,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        block_out_channels=channels,
        scaling_factor=scaling_factor,
    )


def _sd_scheduler_kwargs() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        prediction_type="epsilon",
    )


def _euler_scheduler() -> EulerDiscreteScheduler:
    """The SD / SDXL text-to-image scheduler."""
    return EulerDiscreteScheduler(**_sd_scheduler_kwargs(), timestep_spacing="leading")


def _clip_text() -> tuple[CLIPTokenizer, CLIPTextModel]:
    """``torch.manual_seed(0)``, then the tiny CLIP tokenizer and its text encoder."""
    torch.manual_seed(0)
    tokenizer = make_clip_tokenizer()
    return tokenizer, CLIPTextModel(_text_config(tokenizer)).eval()


def _unet(**config) -> UNet2DConditionModel:
    """A tiny two-level UNet (32 and 64 channels, one layer a block, 8x8 latents of 4 channels
    in and out); ``config`` sets the block types and conditioning, and may override the rest."""
    base = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=32,
    )
    return UNet2DConditionModel(**{**base, **config})


def build_sd(path: Path) -> Path:
    """SD 1.x-style ``StableDiffusionPipeline``; native size 64x64."""
    path = Path(path)
    tokenizer, text_encoder = _clip_text()
    unet = _unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
    )
    StableDiffusionPipeline(
        vae=_vae(4),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_euler_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        image_encoder=None,
    ).save_pretrained(path)
    return path


def build_sdxl(path: Path) -> Path:
    """Tiny ``StableDiffusionXLPipeline`` (two text encoders); native size 64x64."""
    path = Path(path)
    tokenizer, text_encoder = _clip_text()
    tokenizer_2 = make_clip_tokenizer()
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, projection_dim=TEXT_WIDTH)
    ).eval()
    addition_time_embed_dim = 8
    unet = _unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # 6 micro-conditioning ints (orig size, crop coords, target size), each time-embedded,
        # plus the pooled projection of text_encoder_2.
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + TEXT_WIDTH,
        # hidden states of both text encoders are concatenated
        cross_attention_dim=2 * TEXT_WIDTH,
        transformer_layers_per_block=1,
    )
    StableDiffusionXLPipeline(
        vae=_vae(4, scaling_factor=0.13025),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_euler_scheduler(),
        force_zeros_for_empty_prompt=True,
    ).save_pretrained(path)
    return path


def _kandinsky_prior_components(embed_dim: int) -> dict:
    """The tiny components of a Kandinsky prior (2.1 and 2.2 share them), seeded with
    ``torch.manual_seed(0)``: keyword arguments for ``KandinskyPriorPipeline`` and
    ``KandinskyV22PriorPipeline`` alike."""
    torch.manual_seed(0)
    tokenizer = make_clip_tokenizer()
    text_encoder = CLIPTextModelWithProjection(
        _text_config(tokenizer, projection_dim=embed_dim)
    ).eval()
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(**dict(_VISION, projection_dim=embed_dim))
    ).eval()
    image_size = _VISION["image_size"]
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        resample=3,
    )
    prior = PriorTransformer(
        num_attention_heads=2,
        attention_head_dim=12,
        num_layers=1,
        embedding_dim=embed_dim,
        num_embeddings=77,
        additional_embeddings=4,
    )
    # A fresh PriorTransformer has clip_std == 0, which makes every embedding all zeros.
    prior.clip_std = torch.nn.Parameter(torch.ones_like(prior.clip_std))
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    return dict(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        image_processor=image_processor,
    )


def _kandinsky_unet(**embedding) -> UNet2DConditionModel:
    """A Kandinsky decoder UNet (2.1 and 2.2 alike); ``embedding`` names how it takes the
    conditioning (``addition_embed_type``, ``encoder_hid_dim``, ``encoder_hid_dim_type``,
    ``cross_attention_dim``)."""
    return _unet(
        out_channels=8,  # epsilon + learned variance (the pipeline splits them under guidance)
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        attention_head_dim=8,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        **embedding,
    )


def _movq() -> VQModel:
    """The Kandinsky decoders' tiny MoVQ image autoencoder (scale factor 8)."""
    return VQModel(
        **_AUTOENCODER,
        down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
        up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
        # the spatial-norm decoder needs channel counts that are multiples of 32
        block_out_channels=(32, 32, 32, 64),
        num_vq_embeddings=16,
        vq_embed_dim=4,
        norm_type="spatial",
    )


def _kandinsky_decoder_scheduler_kwargs() -> dict:
    """What the Kandinsky decoder schedulers share: linear betas, epsilon prediction."""
    return dict(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def build_kandinsky22(prior_path: Path, decoder_path: Path) -> tuple[Path, Path]:
    """Tiny Kandinsky 2.2 prior + decoder; decoder native size 64x64 (MoVQ factor 8)."""
    prior_path, decoder_path = Path(prior_path), Path(decoder_path)
    embed_dim = TEXT_WIDTH  # CLIP image-embedding size shared by prior and decoder

    # ---- prior
    KandinskyV22PriorPipeline(**_kandinsky_prior_components(embed_dim)).save_pretrained(prior_path)

    # ---- decoder
    torch.manual_seed(0)
    unet = _kandinsky_unet(
        addition_embed_type="image",
        encoder_hid_dim=embed_dim,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=64,
    )
    movq = _movq()
    decoder_scheduler = DDPMScheduler(
        **_kandinsky_decoder_scheduler_kwargs(), variance_type="learned_range"
    )
    KandinskyV22Pipeline(unet=unet, scheduler=decoder_scheduler, movq=movq).save_pretrained(
        decoder_path
    )
    return prior_path, decoder_path


def build_kandinsky22_inpaint(path: Path) -> Path:
    """A tiny Kandinsky 2.2 inpainting decoder (``KandinskyV22InpaintPipeline``: its UNet reads
    the latents, the masked picture's latents and the mask, 4 + 4 + 1 channels), to pair with
    build_kandinsky22's prior as a model entry's ``inpaint`` pipeline."""
    torch.manual_seed(1)
    unet = _kandinsky_unet(addition_embed_type="image", encoder_hid_dim=TEXT_WIDTH,
                           encoder_hid_dim_type="image_proj", cross_attention_dim=64, in_channels=9)
    scheduler = DDPMScheduler(**_kandinsky_decoder_scheduler_kwargs(), variance_type="learned_range")
    KandinskyV22InpaintPipeline(unet=unet, scheduler=scheduler, movq=_movq()).save_pretrained(path)
    return Path(path)


def build_upscaler_x4(path: Path) -> Path:
    """Tiny ``StableDiffusionUpscalePipeline``: low-res image in, x4 out (32x32 -> 128x128)."""
    path = Path(path)
    tokenizer, text_encoder = _clip_text()
    unet = _unet(
        sample_size=32,
        in_channels=7,  # 4 latent + 3 low-res image channels
        # three levels with attention only at the lowest (a quarter of the side), and none in the
        # VAE's middle: the x4 upscaler works at the picture's own size (a 128x64 grid picture is
        # 8,192 latent positions), where attention over every position cost ~30 s an upscale here
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        use_linear_projection=True,
        num_class_embeds=1000,  # noise level is passed as class label; must exceed max_noise_level
    )
    vae = _vae(3, scaling_factor=0.08333, mid_block_add_attention=False)
    low_res_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    scheduler = DDIMScheduler(
        **_sd_scheduler_kwargs(), clip_sample=False, set_alpha_to_one=False
    )
    StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        max_noise_level=350,
    ).save_pretrained(path)
    return path


def build_all(root: Path) -> dict[str, Path]:
    """Build every tiny pipeline into ``root/<name>``; folders already holding a
    ``model_index.json`` are kept as they are."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "sd": root / "sd",
        "sdxl": root / "sdxl",
        "kandinsky22-prior": root / "kandinsky22-prior",
        "kandinsky22": root / "kandinsky22",
        "upscaler-x4": root / "upscaler-x4",
    }

    def missing(*names: str) -> bool:
        return any(not (paths[n] / "model_index.json").exists() for n in names)

    if missing("sd"):
        build_sd(paths["sd"])
    if missing("sdxl"):
        build_sdxl(paths["sdxl"])
    if missing("kandinsky22-prior", "kandinsky22"):
        build_kandinsky22(paths["kandinsky22-prior"], paths["kandinsky22"])
    if missing("upscaler-x4"):
        build_upscaler_x4(paths["upscaler-x4"])
    return paths


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/tiny_models.py DIR
    import sys
    import time

    t0 = time.perf_counter()
    for name, p in build_all(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models")).items():
        print(f"{name}: {p}")
    print(f"built in {time.perf_counter() - t0:.2f}s")


def build_sd_with_safety_checker(path: Path, *, flag_everything: bool) -> Path:
    """The tiny SD pipeline with a tiny NSFW ``StableDiffusionSafetyChecker``.

    The checker flags an image when an embedding's cosine similarity to a concept is above the
    concept's threshold: thresholds of -2 flag every image, +2 none (cosines lie in [-1, 1]).
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    path = Path(path)
    build_sd(path)
    torch.manual_seed(0)
    tokenizer = make_clip_tokenizer()
    config = CLIPConfig(text_config=_text_config(tokenizer).to_dict(), vision_config=dict(_VISION),
                        projection_dim=TEXT_WIDTH)
    checker = StableDiffusionSafetyChecker(config).eval()
    threshold = -2.0 if flag_everything else 2.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    extractor = CLIPImageProcessor(crop_size=32, size=32)
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=checker, feature_extractor=extractor,
                                                   requires_safety_checker=True)
    pipe.save_pretrained(path)
    return path


# -- Kandinsky 2.1 ------------------------------------------------------------------------------

# Whole-word pieces of the tiny XLM-RoBERTa (SentencePiece-style, "▁" marks a word start); any
# other printable ASCII text falls back to single characters.
_XLMR_WORDS = (
    "a an the of in on at with and or by to for from is red blue green white black fox cat dog "
    "whale snow tree trees forest sea sky city night day sun moon house mountain river portrait "
    "photo painting oil watercolor style art cute big small old new beautiful light dark"
).split()


def make_xlm_roberta_tokenizer() -> transformers.XLMRobertaTokenizerFast:
    """An XLM-RoBERTa (Unigram) tokenizer with a hand-written ~260-token vocabulary.

    Layout like the real one: ``<s>``, ``<pad>``, ``</s>``, ``<unk>`` first (ids 0-3), ``<mask>``
    last. Whole words score higher than the characters they are made of; other printable ASCII
    falls back to one piece per character, anything else is ``<unk>``. ``model_max_length`` 77.
    """
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("▁", -3.0)] + [("▁" + w, -5.0) for w in _XLMR_WORDS]
    pieces += [("▁" + c, -9.0) for c in chars] + [(c, -10.0) for c in chars]
    pieces += [("<mask>", 0.0)]
    return transformers.XLMRobertaTokenizerFast(vocab=pieces, model_max_length=77)


def build_kandinsky21(prior_path: Path, decoder_path: Path) -> tuple[Path, Path]:
    """Tiny Kandinsky 2.1 prior + decoder; decoder native size 64x64 (MoVQ factor 8).

    The prior is the 2.2 prior's tiny components in a ``KandinskyPriorPipeline``. The decoder
    (``KandinskyPipeline``) also reads the text: a ``MultilingualCLIP`` (tiny XLM-RoBERTa + a
    linear map to the image-embedding size) feeds the UNet's ``text_image`` embeddings, so the UNet's
    ``cross_attention_dim`` is the image-embedding size and its ``encoder_hid_dim`` the XLM-R width.
    """
    from diffusers import KandinskyPipeline, KandinskyPriorPipeline
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    prior_path, decoder_path = Path(prior_path), Path(decoder_path)
    embed_dim = TEXT_WIDTH  # CLIP image-embedding size shared by prior and decoder

    # ---- prior (the same tiny components as Kandinsky 2.2's)
    KandinskyPriorPipeline(**_kandinsky_prior_components(embed_dim)).save_pretrained(prior_path)

    # ---- decoder
    torch.manual_seed(0)
    xlmr_tokenizer = make_xlm_roberta_tokenizer()
    xlmr_width = 32
    mclip = MultilingualCLIP(
        MCLIPConfig(
            transformerDimSize=xlmr_width,  # XLM-R hidden size → ...
            imageDimSize=embed_dim,  # ... the pooled text embedding, in image-embedding space
            **_text_encoder_sizes(xlmr_tokenizer, xlmr_width),
            # XLM-R positions start after the padding id (1): 77 tokens need 79 positions
            max_position_embeddings=80,
            type_vocab_size=1,
        )
    ).eval()
    unet = _kandinsky_unet(
        addition_embed_type="text_image",
        encoder_hid_dim=xlmr_width,  # XLM-R hidden states → cross-attention tokens
        encoder_hid_dim_type="text_image_proj",
        # text_image embeddings take the pooled text and the image embedding at this size
        cross_attention_dim=embed_dim,
    )
    movq = _movq()
    # what kandinsky-community/kandinsky-2-1 ships: DDIM, linear betas
    decoder_scheduler = DDIMScheduler(
        **_kandinsky_decoder_scheduler_kwargs(), set_alpha_to_one=False
    )
    KandinskyPipeline(
        text_encoder=mclip,
        tokenizer=xlmr_tokenizer,
        unet=unet,
        scheduler=decoder_scheduler,
        movq=movq,
    ).save_pretrained(decoder_path)
    return prior_path, decoder_path


# ---- single-file checkpoints: a saved pipeline in the original Stable Diffusion (LDM) layout ----
# The layout users download from model sites: one file, keys under model.diffusion_model. (UNet),
# first_stage_model. (VAE) and cond_stage_model.transformer. (SD 1.x text encoder). diffusers
# reads it with from_single_file; this writes it, for any number of levels and layers a block.

def _rename(key: str, renames: list[tuple[str, str]]) -> str:
    for diffusers_part, ldm_part in renames:
        key = key.replace(diffusers_part, ldm_part)
    return key


_LDM_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
               ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]


def _ldm_unet(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    config = unet.config
    per = config.layers_per_block + 1  # an LDM level: its layers and then its down/upsampler
    levels = len(config.block_out_channels)
    prefixes = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
                ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
                ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
                ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(levels):
        for j in range(config.layers_per_block):
            prefixes += [(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{i * per + j + 1}.0."),
                         (f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{i * per + j + 1}.1.")]
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * per}.0.op."))
        has_attention = "CrossAttn" in config.up_block_types[i]
        for j in range(per):
            prefixes += [(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * per + j}.0."),
                         (f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * per + j}.1.")]
        upsampler = f"output_blocks.{i * per + per - 1}.{2 if has_attention else 1}."
        prefixes.append((f"up_blocks.{i}.upsamplers.0.", upsampler))
    state = {}
    for key, value in unet.state_dict().items():
        prefix = next((p for p in prefixes if key.startswith(p[0])), None)
        assert prefix is not None, key
        rest = key[len(prefix[0]):]
        if "resnets" in prefix[0]:
            rest = _rename(rest, _LDM_RESNET)
        state["model.diffusion_model." + prefix[1] + rest] = value
    return state


def _ldm_vae(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    renames = [("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out"),
               ("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2."),
               ("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."),
               ("mid_block.attentions.0.to_q.", "mid.attn_1.q."), ("mid_block.attentions.0.to_k.", "mid.attn_1.k."),
               ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
               ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out.")]
    for i in range(levels):
        renames += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                    (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                    (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block."),
                    (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")]
    state = {}
    for key, value in vae.state_dict().items():
        new = _rename(key, renames)
        if "mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)  # LDM's attention is 1×1 convolutions
        state["first_stage_model." + new] = value
    return state


def build_sd_single_file(pipeline_folder: Path, path: Path) -> Path:
    """The SD 1.x pipeline saved in `pipeline_folder` (`build_sd`) as one `.safetensors`
    checkpoint in the original layout, as model sites publish them."""
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(pipeline_folder)
    state = {**_ldm_unet(pipe.unet), **_ldm_vae(pipe.vae),
             # real checkpoints carry transformers 4's names (text_model.…); transformers 5 dropped the prefix
             **{"cond_stage_model.transformer." + ("" if k.startswith("text_model.") else "text_model.") + k: v
                for k, v in pipe.text_encoder.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return Path(path)


# --- LoRAs, embeddings and VAEs for the tiny pipelines (what admins download from model sites) ---

def build_lora(pipeline_folder: Path, path: Path, *, seed: int = 1, text_encoder: bool = True) -> Path:
    """A LoRA for the tiny SD (or SDXL) pipeline in ``pipeline_folder``, saved as one
    ``.safetensors`` file in diffusers' LoRA format (what ``load_lora_weights`` reads): peft's
    LoraConfig on the UNet's attention projections (and, with ``text_encoder``, the first text
    encoder's), random non-zero weights from ``seed`` so that it changes the pictures."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    path = Path(path)
    pipe = DiffusionPipeline.from_pretrained(pipeline_folder)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))}
    if text_encoder:
        # peft directly: transformers' own add_adapter wants a newer peft than diffusers does
        inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
                                pipe.text_encoder)
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(pipe.text_encoder))
    type(pipe).save_lora_weights(path.parent, weight_name=path.name, **layers)
    return path


def build_embedding(path: Path, *, seed: int = 2, vectors: int = 1, sdxl: bool = False) -> Path:
    """A textual-inversion embedding for the tiny pipelines (width TEXT_WIDTH) as an
    ``.safetensors`` file: ``{"emb_params": (vectors, width)}`` as kohya/AUTOMATIC1111 save it,
    or for SDXL ``{"clip_l": …, "clip_g": …}``."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(vectors, TEXT_WIDTH, generator=generator) * 5  # far from any word's
    tensors = {"clip_l": vector, "clip_g": vector.clone()} if sdxl else {"emb_params": vector}
    save_file(tensors, str(path))
    return Path(path)


def build_vae(path: Path, *, seed: int = 3) -> Path:
    """A tiny AutoencoderKL (the SD pipelines' shape, other random weights) saved with
    ``save_pretrained`` into ``path`` (config.json + weights), as a VAE repo is laid out."""
    torch.manual_seed(seed)
    _vae(4).save_pretrained(path)
    return Path(path)


def build_esrgan(path: Path, *, arch: str = "compact", scale: int = 2, channels: tuple[int, int] = (3, 3)) -> Path:
    """A tiny random-weight super-resolution network of the ESRGAN family, saved as the files
    admins download are (``.pth``: a plain state dict; ``.safetensors``), for spandrel to
    recognise by its keys: ``arch="compact"`` is Real-ESRGAN's SRVGGNetCompact (8 features, 2
    convolutions: it sees 4 pixels around each input pixel), ``"rrdb"`` ESRGAN's RRDBNet (one
    block of 8 features). ``scale``: 1, 2 or 4 (the rrdb net: 1, 2, 4 or 8). ``channels``: the
    colour channels it reads and writes (grey models: (1, 1))."""
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    if arch == "compact":
        net: torch.nn.Module = Compact(num_in_ch=channels[0], num_out_ch=channels[1], num_feat=8, num_conv=2,
                                       upscale=scale)
    elif arch == "rrdb":
        net = ESRGAN(in_nc=channels[0], out_nc=channels[1], num_filters=8, num_blocks=1, scale=scale)
    else:
        raise ValueError(f"unknown arch {arch}")
    state = {key: value.detach().clone().contiguous() for key, value in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def build_controlnet(pipeline_folder: Path, path: Path, *, seed: int = 4) -> Path:
    """A ControlNetModel matching the UNet of the tiny pipeline in ``pipeline_folder``
    (``ControlNetModel.from_unet``: the UNet's encoder half copied), its zero convolutions
    given small random weights so that a control image changes the result (fresh ones are
    zeros: no effect at all, as a ControlNet starts its training); saved with save_pretrained."""
    from diffusers import ControlNetModel

    unet = UNet2DConditionModel.from_pretrained(Path(pipeline_folder) / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_channels=3)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if "controlnet_down_blocks" in name or "controlnet_mid_block" in name or "conv_out" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.5)
    controlnet.save_pretrained(path)
    return Path(path)


def build_depth_estimator(path: Path, *, seed: int = 5) -> Path:
    """A tiny DPT depth-estimation model (transformers ``DPTForDepthEstimation``: a 2-layer ViT
    of width 32 on 32-pixel inputs) with its ``DPTImageProcessor``, saved with save_pretrained:
    ``AutoModelForDepthEstimation``/``AutoImageProcessor`` load the folder."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[16, 16, 32, 32],
                       fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], head_in_index=-1)
    DPTForDepthEstimation(config).eval().save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False,
                      do_pad=False).save_pretrained(path)
    return Path(path)


def build_kandinsky22_controlnet(path: Path) -> Path:
    """A tiny Kandinsky 2.2 ControlNet decoder (``KandinskyV22ControlnetPipeline``: a UNet with
    ``addition_embed_type="image_hint"`` that reads a depth hint beside the image embedding, the
    MoVQ and scheduler of the tiny decoder); native size 64x64; fits the tiny 2.2 prior."""
    from diffusers import KandinskyV22ControlnetPipeline

    torch.manual_seed(6)
    # the hint, embedded to 4 channels, is concatenated to the 4 latent channels: 8 in
    unet = _kandinsky_unet(in_channels=8, addition_embed_type="image_hint", encoder_hid_dim=TEXT_WIDTH,
                           encoder_hid_dim_type="image_proj", cross_attention_dim=64)
    scheduler = DDPMScheduler(**_kandinsky_decoder_scheduler_kwargs(), variance_type="learned_range")
    KandinskyV22ControlnetPipeline(unet=unet, scheduler=scheduler, movq=_movq()).save_pretrained(path)
    return Path(path)


# -- Kandinsky 3 --------------------------------------------------------------------------------

def make_t5_tokenizer() -> transformers.T5TokenizerFast:
    """A T5 (Unigram) tokenizer with a hand-written ~250-token vocabulary, built offline.

    Layout like the real one: ``<pad>``, ``</s>``, ``<unk>`` first (ids 0-2); whole words (the
    tiny XLM-RoBERTa's word list) score higher than the characters they are made of, and other
    printable ASCII falls back to one piece per character. No sentinel tokens (``extra_ids=0``);
    ``model_max_length`` 128, what Kandinsky 3's pipelines pad to.
    """
    chars = [chr(c) for c in range(33, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -5.0) for w in _XLMR_WORDS]
    pieces += [("▁" + c, -9.0) for c in chars] + [(c, -10.0) for c in chars]
    return transformers.T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=128)


def build_kandinsky3(path: Path) -> Path:
    """Tiny ``Kandinsky3Pipeline`` (T5 encoder, Kandinsky3UNet, MoVQ); native size 64x64.

    Kandinsky 3's pipelines make latents of H/8 × W/8 (sizes rounded up to multiples of 64) and
    decode them with the MoVQ: the tiny MoVQ of the 2.x decoders (scale factor 8) fits. The
    UNet's ``encoder_hid_dim`` is the T5 width; the scheduler is what kandinsky-community/
    kandinsky-3 ships (DDPM, squared-cosine betas)."""
    from diffusers import Kandinsky3Pipeline, Kandinsky3UNet
    from transformers import T5Config, T5EncoderModel

    path = Path(path)
    torch.manual_seed(0)
    tokenizer = make_t5_tokenizer()
    t5_width = 32
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=t5_width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )).eval()
    unet = Kandinsky3UNet(
        in_channels=4,
        time_embedding_dim=4,
        groups=2,
        attention_head_dim=4,
        layers_per_block=3,
        block_out_channels=(32, 64),
        cross_attention_dim=4,
        encoder_hid_dim=t5_width,
    )
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                              beta_schedule="squaredcos_cap_v2", clip_sample=True, thresholding=False)
    Kandinsky3Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                       movq=_movq()).save_pretrained(path)
    return path


# -- CLIP (for --clip, CLIP guidance) -----------------------------------------------------------

def build_clip(path: Path, *, seed: int = 0) -> Path:
    """A tiny transformers ``CLIPModel`` (the tiny CLIP text encoder and a 32x32 vision encoder,
    projections of TEXT_WIDTH) with its tokenizer and image processor, saved with
    ``save_pretrained`` into ``path`` as a CLIP repo is laid out (what an entry's
    ``clip_model`` names)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    path = Path(path)
    torch.manual_seed(seed)
    tokenizer = make_clip_tokenizer()
    config = CLIPConfig(text_config=_text_config(tokenizer).to_dict(), vision_config=dict(_VISION),
                        projection_dim=TEXT_WIDTH)
    CLIPModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    size = _VISION["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return path


# -- /describe: a captioner (BLIP) and a style-word ranker (CLIP) --------------------------------

#: a few words, so that random weights caption in words (gibberish, but words)
_CAPTION_WORDS = ("a photo of the cat dog sitting on red blue house tree person in with and "
                  "street beach painting window woman man field sky").split()


def make_bert_tokenizer() -> transformers.BertTokenizerFast:
    """A WordPiece tokenizer as BLIP's (BERT's special tokens and BLIP's ``[DEC]`` start token)
    over `_CAPTION_WORDS`."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *_CAPTION_WORDS]
    return transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, bos_token="[DEC]",
                                          model_max_length=64)


def build_blip(path: Path, *, seed: int = 4) -> Path:
    """A random-weight ``BlipForConditionalGeneration`` (two-layer ViT on 32×32 images, a
    two-layer text decoder 32 wide) with its ``BlipProcessor``, saved with ``save_pretrained``
    into ``path`` as a captioning repo is laid out (config.json, weights, processor files)."""
    torch.manual_seed(seed)
    tokenizer = make_bert_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    text = transformers.BlipTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, encoder_hidden_size=TEXT_WIDTH,
        max_position_embeddings=64, pad_token_id=ids("[PAD]"), bos_token_id=ids("[DEC]"),
        eos_token_id=ids("[SEP]"), sep_token_id=ids("[SEP]"), **_ENCODER_LAYERS)
    vision = transformers.BlipVisionConfig(hidden_size=TEXT_WIDTH, image_size=32, patch_size=8, **_ENCODER_LAYERS)
    config = transformers.BlipConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                     projection_dim=TEXT_WIDTH)
    transformers.BlipForConditionalGeneration(config).eval().save_pretrained(path)
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(path)
    return path
