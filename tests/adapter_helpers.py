"""The LoRAs, embeddings and VAE of the adapter tests (test_adapters.py, test_loras_studio.py), built
tiny in code, and a models.toml naming them with the tiny pipelines, as an admin writes it."""

from __future__ import annotations

from pathlib import Path

from tests.tiny_models import build_embedding, build_lora, build_vae


def build_additions(tiny_models: dict[str, Path], root: Path) -> dict[str, Path]:
    """Two SD LoRAs ("ink" with text-encoder layers; "glow" UNet only, in a folder of its own), an
    SDXL LoRA, an SD and an SDXL embedding, and a VAE folder, under ``root``."""
    return {
        "ink": build_lora(tiny_models["sd"], root / "ink.safetensors", seed=1),
        "glow": build_lora(tiny_models["sd"], root / "glow" / "glow_v2.safetensors", seed=4, text_encoder=False),
        "xl-ink": build_lora(tiny_models["sdxl"], root / "xl-ink.safetensors", seed=5),
        "emb": build_embedding(root / "easyneg.safetensors"),
        "xl-emb": build_embedding(root / "xl-emb.safetensors", sdxl=True),
        "vae": build_vae(root / "vae"),
    }


def registry_text(tiny_models, files, *, vae: bool = False) -> str:
    return f'''
[models.tiny-sd]
source = "{tiny_models['sd']}"
family = "sd"
native_side = 64
steps = 2
guidance = 5.0
{f'vae = "{files["vae"]}"' if vae else ""}

[models.tiny-sdxl]
source = "{tiny_models['sdxl']}"
family = "sdxl"
native_side = 64
steps = 2

[loras.ink]
source = "{files['ink']}"
families = ["sd"]
weight = 0.9
triggers = ["ink wash"]

[loras.glow]
source = "{files['glow'].parent}"
weight_name = "{files['glow'].name}"
families = ["sd"]

[loras.xl-ink]
source = "{files['xl-ink']}"
families = ["sdxl"]

[embeddings.easyneg]
source = "{files['emb']}"
families = ["sd"]

[embeddings.xl-style]
source = "{files['xl-emb']}"
token = "<xl-style>"
families = ["sdxl"]
'''
