"""SigLIP's vision tower (Zhai et al. 2023): no class token, a MAP head (a learned probe attending over the
tokens) pools, no classifier; tanh GELU in big_vision, inputs 0.5/0.5."""

from vit_jax.families.family import Family, Names, TimmArchitecture

PIXELS = dict(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
_SIGLIP = dict(classifier="map", num_classes=0, gelu="tanh")
_SO400M = dict(patch_size=14, hidden_size=1152, mlp_dim=4304, num_heads=16, num_layers=27)  # mlp_ratio 3.7362
_TIMM = dict(layer_norm_eps=1e-6, classifier="map", mlp_type="gelu", rope=False, distilled=False, **PIXELS,
             posemb_resize="torch_bicubic_antialias")

_presets = {("SigLIP-B_16" + ("" if size == 224 else f"_{size}")): dict(variant="B", patch=16, image_size=size,
                                                                        **_SIGLIP)
            for size in (224, 256, 384)}
_presets["SigLIP-So400m_14"] = dict(**_SO400M, **_SIGLIP)
# timm's 384 px So400m/14: its 14 px convolution covers 378 of the 384 pixels (27 x 27 patches); the same weights.
_presets["SigLIP-So400m_14_384"] = dict(image_size=378, **_SO400M, **_SIGLIP)

# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's
# vit_{base_patch16,so400m_patch14}_siglip_{224,256,384} (no head).
_GOLDEN_PARAMS = {
    "SigLIP-B_16": 92_884_224,
    "SigLIP-B_16_256": 92_930_304,
    "SigLIP-B_16_384": 93_176_064,
    "SigLIP-So400m_14": 427_680_704,
    "SigLIP-So400m_14_384": 428_225_600,
}

FAMILY = Family(
    name="SigLIP",
    summary="no class token, a MAP head pools, no classifier",
    presets=_presets,
    timm_architectures=(
        # timm builds these SigLIPs with gelu_tanh, the others with the exact GELU
        TimmArchitecture(r"vit_base_patch32_siglip_256|vit_large_patch16_siglip_512|vit_so400m_patch16_siglip_\d+",
                         "vit_base_patch32_siglip_256", dict(_TIMM, gelu="tanh")),
        TimmArchitecture(r"vit_(base|large|so400m)_patch\d+_siglip_\d+", "vit_base_patch16_siglip_224",
                         dict(_TIMM, gelu="exact")),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={"SigLIP-B_16": "vit_base_patch16_siglip_224", "SigLIP-B_16_256": "vit_base_patch16_siglip_256",
                  "SigLIP-B_16_384": "vit_base_patch16_siglip_384", "SigLIP-So400m_14": "vit_so400m_patch14_siglip_224",
                  "SigLIP-So400m_14_384": "vit_so400m_patch14_siglip_384"},
    pixels=PIXELS,
    transformers_outputs={"SiglipVisionModel": "pooler_output"},
)

# transformers' vision towers: SiglipVisionModel, and Siglip2VisionModel at its fixed resolution (the square
# grid of its `num_patches`, where its per-image resize of the position grid is the identity); a two-tower
# SiglipModel / Siglip2Model reads as its vision tower (config under "vision_config"). vit_jax/formats/hf_siglip.py
# reads and writes them.
TRANSFORMERS_MODEL_TYPES = {"siglip_vision_model": "SiglipVisionModel", "siglip": "SiglipVisionModel",
                            "siglip2_vision_model": "Siglip2VisionModel", "siglip2": "Siglip2VisionModel"}
TRANSFORMERS_TWO_TOWER_TYPES = ("siglip", "siglip2")
TRANSFORMERS_WRITTEN_TYPES = {"SiglipVisionModel": "siglip_vision_model", "Siglip2VisionModel": "siglip2_vision_model"}
# Siglip2 embeds pre-cut patches with a Linear over (ph, pw, C)-ordered pixels (its processor's order): timm's
# convolution, transposed.
TRANSFORMERS_LINEAR_PATCH_CLASS = "Siglip2VisionModel"
# transformers 4.x names the tower under vision_model., and 5.x still loads those names (its own save_pretrained
# drops the prefix, which 4.x cannot load); the text tower and the logit scale and bias are left out on read.
TRANSFORMERS_TOWER = "vision_model."
TRANSFORMERS_OTHER_TOWER = ("text_model.", "logit_")
# hidden_act -> our gelu (the default when config.json is silent); the rest is fixed: LayerNorm eps 1e-6, the MAP
# head with no classifier, inputs 0.5/0.5.
TRANSFORMERS_ACTIVATIONS = {"gelu_pytorch_tanh": "tanh", "gelu": "exact", "gelu_new": "tanh"}
TRANSFORMERS_DEFAULT_ACTIVATION = "gelu_pytorch_tanh"
TRANSFORMERS_FIXED = dict(layer_norm_eps=1e-6, classifier="map", num_classes=0, **PIXELS)
# The MAP head's nn.MultiheadAttention holds q, k and v as one in_proj (3D, D): timm's attn_pool.q (the first D
# rows) and attn_pool.kv (the other 2D), named here as two virtual parts.
TRANSFORMERS_PACKED_QKV = "head.attention.in_proj_"
_LAYER = "encoder.layers.{i}"
TRANSFORMERS_NAMES: Names = (
    ("patch_embed.proj.{p}", "embeddings.patch_embedding.{p}"),
    ("pos_embed", "embeddings.position_embedding.weight"),  # stored without timm's batch axis
    ("blocks.{i}.norm1.{p}", f"{_LAYER}.layer_norm1.{{p}}"),
    ("blocks.{i}.attn.qkv.{p}", tuple(f"{_LAYER}.self_attn.{n}_proj.{{p}}" for n in "qkv")),
    ("blocks.{i}.attn.proj.{p}", f"{_LAYER}.self_attn.out_proj.{{p}}"),
    ("blocks.{i}.norm2.{p}", f"{_LAYER}.layer_norm2.{{p}}"),
    ("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.mlp.fc1.{{p}}"),
    ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.fc2.{{p}}"),
    ("norm.{p}", "post_layernorm.{p}"),
    ("attn_pool.latent", "head.probe"),
    ("attn_pool.q.{p}", TRANSFORMERS_PACKED_QKV + "q_{p}"),
    ("attn_pool.kv.{p}", TRANSFORMERS_PACKED_QKV + "kv_{p}"),
    ("attn_pool.proj.{p}", "head.attention.out_proj.{p}"),
    ("attn_pool.norm.{p}", "head.layernorm.{p}"),
    ("attn_pool.mlp.fc1.{p}", "head.mlp.fc1.{p}"),
    ("attn_pool.mlp.fc2.{p}", "head.mlp.fc2.{p}"),
)
