"""Tiny random-weight diffusers pipelines, built locally, for the demo and the tests."""

import json
import string
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    Kandinsky3Pipeline,
    Kandinsky3UNet,
    LDMPipeline,
    LDMTextToImagePipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

SEED = 0
# The real CLIP tokenizers pad to 77; the tiny ones too, so prompts truncate where they would in production.
TEXT_LENGTH = 77
WORDS = (
    "a an and of the with without no left right bilateral small large mild severe chest x ray xray "
    "radiograph frontal lateral pa ap view lung lungs heart normal abnormal cardiomegaly effusion pleural "
    "pneumonia pneumothorax edema consolidation opacity atelectasis nodule mass fracture support devices"
).split()
CHARS = [c for c in string.printable if not c.isspace()]


def clip_tokenizer() -> CLIPTokenizer:
    # Byte-level BPE without merges spells words letter by letter; printable ASCII bytes map to themselves.
    vocab = {tok: i for i, tok in enumerate(CHARS + [c + "</w>" for c in CHARS])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_LENGTH)


def clip_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    # Ids from the tokenizer, so the pooled output is read at the end-of-text token, not at argmax(ids).
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=1, projection_dim=32, max_position_embeddings=TEXT_LENGTH, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


def t5_tokenizer() -> T5Tokenizer:
    # Unigram scores prefer whole words, then "▁"-prefixed characters, so any ASCII prompt tokenizes.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [("▁" + w, -1.0) for w in WORDS]
    pieces += [("▁" + c, -3.0) for c in CHARS] + [(c, -4.0) for c in CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    torch.manual_seed(SEED)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=1,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return T5EncoderModel(config)


def bert_tokenizer() -> BertTokenizer:
    # "##" pieces for every character let WordPiece spell the words that are not in the list.
    lower = [c for c in CHARS if not c.isupper()]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *lower, *("##" + c for c in lower)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return BertTokenizer(vocab=vocab, model_max_length=TEXT_LENGTH)


def kl_vae(channels: tuple[int, ...] = (4, 8), latent_channels: int = 4, **kwargs) -> AutoencoderKL:
    torch.manual_seed(SEED)
    return AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        block_out_channels=channels,
        latent_channels=latent_channels,
        **{"norm_num_groups": min(channels)} | kwargs,
    )


def vq_model(channels: tuple[int, ...], latent_channels: int = 3, **kwargs) -> VQModel:
    torch.manual_seed(SEED)
    return VQModel(
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        block_out_channels=channels,
        latent_channels=latent_channels,
        num_vq_embeddings=16,
        norm_num_groups=min(channels) // 4,
        scaling_factor=1.0,  # LDM divides latents by it: 0.18215 would blow float noise up 5.5 times
        **kwargs,
    )


def cond_unet(sample_size: int, cross_attention_dim: int, **kwargs) -> UNet2DConditionModel:
    torch.manual_seed(SEED)
    config = dict(
        sample_size=sample_size, in_channels=4, out_channels=4, block_out_channels=(4, 8), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=2, norm_num_groups=2,
    )  # fmt: skip
    return UNet2DConditionModel(**config | kwargs)


def sd_ddim() -> DDIMScheduler:
    # Stable Diffusion 1.x's schedule; StableDiffusionPipeline warns about any steps_offset but 1.
    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip


def save(pipe, path: Path) -> Path:
    pipe.save_pretrained(path, safe_serialization=True)
    return Path(path)


def build_ddpm(path: Path, *, scheduler: str = "ddpm", size: int = 32, channels: int = 1) -> Path:
    pipelines = {"ddpm": (DDPMPipeline, DDPMScheduler), "ddim": (DDIMPipeline, DDIMScheduler)}
    if scheduler not in pipelines:
        raise ValueError(f"unknown scheduler {scheduler!r}; use 'ddpm' or 'ddim'")
    torch.manual_seed(SEED)
    unet = UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
    )  # fmt: skip
    pipeline, scheduler_class = pipelines[scheduler]
    return save(pipeline(unet=unet, scheduler=scheduler_class(num_train_timesteps=1000)), path)


def build_stable_diffusion(path: Path, *, text_encoder: str = "clip", size: int = 32) -> Path:
    if text_encoder == "clip":
        tokenizer = clip_tokenizer()
        torch.manual_seed(SEED)
        encoder = CLIPTextModel(clip_config(tokenizer))
    elif text_encoder == "bert":
        tokenizer = bert_tokenizer()
        torch.manual_seed(SEED)
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
            intermediate_size=37, max_position_embeddings=TEXT_LENGTH, pad_token_id=tokenizer.pad_token_id,
            # StableDiffusionPipeline passes the attention mask only to encoders whose config asks for it;
            # BERT, unlike CLIP, is trained to ignore its padding.
            use_attention_mask=True,
        )  # fmt: skip
        encoder = BertModel(config)
    else:
        raise ValueError(f"unknown text encoder {text_encoder!r}; use 'clip' or 'bert'")
    vae = kl_vae()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=encoder,
        tokenizer=tokenizer,
        unet=cond_unet(size // 2 ** (len(vae.config.block_out_channels) - 1), cross_attention_dim=32),
        scheduler=sd_ddim(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return save(pipe, path)


def build_lora(pipeline_path: Path, out_path: Path, *, rank: int = 4) -> Path:
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(pipeline_path, subfolder="unet", local_files_only=True)
    # init_lora_weights=False draws B at random too (PEFT zeroes it by default), so the adapter shows.
    config = LoraConfig(
        r=rank, lora_alpha=rank, target_modules=["to_k", "to_q", "to_v", "to_out.0"], init_lora_weights=False
    )
    torch.manual_seed(SEED)
    unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(
        out_path,
        unet_lora_layers=get_peft_model_state_dict(unet),
        unet_lora_adapter_metadata=config.to_dict(),  # rank and alpha travel with the weights
        safe_serialization=True,
    )
    return Path(out_path)


def build_sdxl(path: Path, *, size: int = 32) -> Path:
    tokenizer = clip_tokenizer()
    torch.manual_seed(SEED)
    encoder = CLIPTextModel(clip_config(tokenizer))
    torch.manual_seed(SEED)
    encoder_2 = CLIPTextModelWithProjection(clip_config(tokenizer))
    vae = kl_vae()
    unet = cond_unet(
        size // 2 ** (len(vae.config.block_out_channels) - 1),
        cross_attention_dim=64,  # both encoders' hidden states side by side
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop numbers and the pooled projection
        use_linear_projection=True,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoder,
        text_encoder_2=encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    save(pipe, path)
    # add_watermarker is an __init__ argument SDXL does not register in its config, so save_pretrained drops
    # it; from_pretrained passes model_index.json keys that match __init__ back in, so the folder keeps the
    # watermarker off even where invisible-watermark is installed.
    index = Path(path) / "model_index.json"
    index.write_text(json.dumps(json.loads(index.read_text()) | {"add_watermarker": False}, indent=2))
    return Path(path)


def build_flux(path: Path, *, size: int = 32) -> Path:
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(clip_config(clip))
    # One latent channel at full resolution, which the pipeline packs 2x2 into the transformer's 4 channels.
    vae = kl_vae(
        (4,), latent_channels=1, sample_size=size, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip,
        text_encoder_2=t5_encoder(t5),
        tokenizer_2=t5,
        transformer=transformer,
    )
    return save(pipe, path)


def build_kandinsky3(path: Path, *, size: int = 32) -> Path:
    # The pipeline rounds height and width up to multiples of 64 and makes 8 latents per 64 pixels (the real
    # MoVQ's factor), so any request up to 64 pixels gives 8x8 latents, which this MoVQ upsamples to `size`.
    if size not in (16, 32, 64):
        raise ValueError("tiny Kandinsky 3 pipelines come in sizes 16, 32 and 64")
    tokenizer = t5_tokenizer()
    torch.manual_seed(SEED)
    # layers_per_block=1 breaks: a block narrows the channels in its first layer and widens them in its last.
    unet = Kandinsky3UNet(
        in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=2,
        block_out_channels=(8, 16), cross_attention_dim=4, encoder_hid_dim=32,
    )  # fmt: skip
    # Kandinsky 3 zero-initialises the scale/shift projections of its norms, so this UNet ignores the timestep
    # and the pooled prompt (a trained one does not). Random values there would make it see them, but also
    # push its batch-size float noise from ~1e-6 to ~1e-5 (a batch-dependent GEMM feeds every norm).
    # The MoVQ's spatial norms hard-code 32 groups, hence 32 channels.
    movq = vq_model((32,) * (size // 8).bit_length(), latent_channels=4, vq_embed_dim=4, norm_type="spatial")
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="squaredcos_cap_v2",
        clip_sample=True, thresholding=False,
    )  # fmt: skip
    pipe = Kandinsky3Pipeline(
        tokenizer=tokenizer, text_encoder=t5_encoder(tokenizer), unet=unet, scheduler=scheduler, movq=movq
    )
    return save(pipe, path)


def build_ldm(path: Path, *, size: int = 32) -> Path:
    vqvae = vq_model((8, 8))
    torch.manual_seed(SEED)
    unet = UNet2DModel(
        sample_size=size // 2, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )  # fmt: skip
    return save(LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler()), path)


def build_ldm_text2img(path: Path, *, size: int = 32) -> Path:
    tokenizer = bert_tokenizer()
    torch.manual_seed(SEED)
    config = LDMBertConfig(
        vocab_size=len(tokenizer), max_position_embeddings=TEXT_LENGTH, encoder_layers=1, encoder_ffn_dim=37,
        encoder_attention_heads=2, head_dim=16, d_model=32, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    bert = LDMBertModel(config)
    # The pipeline makes latents of height // 8 whatever the autoencoder, so this one has four blocks; it is a
    # KL one, as in CompVis/ldm-text2im-large-256: a random VQ codebook would swallow the prompt's effect.
    # scaling_factor=1.0 for the same reason as in vq_model.
    vqvae = kl_vae((8, 8, 8, 8), norm_num_groups=2, scaling_factor=1.0)
    unet = cond_unet(size // 8, cross_attention_dim=32)
    pipe = LDMTextToImagePipeline(vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=sd_ddim())
    return save(pipe, path)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "ddpm": lambda path: build_ddpm(path),
    "ddim": lambda path: build_ddpm(path, scheduler="ddim"),
    "ddpm-rgb": lambda path: build_ddpm(path, channels=3),
    "sd-clip": lambda path: build_stable_diffusion(path),
    "sd-bert": lambda path: build_stable_diffusion(path, text_encoder="bert"),
    "sdxl": lambda path: build_sdxl(path),
    "flux": lambda path: build_flux(path),
    "kandinsky3": lambda path: build_kandinsky3(path),
    "ldm": lambda path: build_ldm(path),
    "ldm-text2img": lambda path: build_ldm_text2img(path),
}

# How to call each pipeline class (type(pipe).__name__). All take generator (a list, one torch.Generator per
# image), num_inference_steps and output_type="np", which gives (n, H, W, C) floats in [0, 1] (C = 1 for a
# grey DDPM/DDIM), and all are batch-invariant per seed except where noted.
#   "unconditional": pipe(batch_size=n, generator=[...], num_inference_steps=k, output_type="np")
#   "text": pipe(prompt=[n prompts], negative_prompt=[n prompts] (not LDMTextToImagePipeline),
#           generator=[...], num_inference_steps=k, guidance_scale=g, height=h, width=w, output_type="np")
# Pass height and width (32 for every kind here): left out, Flux makes 128 pixels and Kandinsky 3 makes 512.
CALL_STYLE: dict[str, str] = {
    "DDPMPipeline": "unconditional",  # nothing else: no eta, and unknown keywords raise TypeError
    "DDIMPipeline": "unconditional",  # also eta=0.0 (deterministic); eta > 0 draws noise from the generators
    "LDMPipeline": "unconditional",  # also eta; unknown keywords are swallowed
    # Also eta (DDIM); CFG when guidance_scale > 1; negative_prompt=None means "".
    "StableDiffusionPipeline": "text",
    # Also prompt_2 / negative_prompt_2 (default: the same); negative_prompt=None gives zero embeddings
    # (force_zeros_for_empty_prompt); eta is accepted but the Euler scheduler ignores it.
    "StableDiffusionXLPipeline": "text",
    # negative_prompt only counts with true_cfg_scale > 1 (default 1.0: one pass); guidance_scale feeds a
    # guidance embedding only when transformer.config.guidance_embeds (False here) and is otherwise ignored;
    # height and width are multiples of 2 * vae_scale_factor (2 here); max_sequence_length (T5 padding, up to
    # 512, default 512) is the one extra knob.
    "FluxPipeline": "text",
    # CFG when guidance_scale > 1, as (g + 1) * cond - g * uncond; negative_prompt=None gives zero embeddings;
    # eta is swallowed. Not batch-invariant when the batch mixes prompts: the T5 context is cut to the longest
    # prompt in the batch, the UNet pools it with a plain mean over that length, and negative prompts are cut
    # to that length too.
    "Kandinsky3Pipeline": "text",
    # No negative_prompt (swallowed by **kwargs, so silently ignored): CFG uses "" when guidance_scale != 1
    # (default 1.0); also eta; height and width multiples of 8.
    "LDMTextToImagePipeline": "text",
}
