"""OpenAI CLIP's vision tower (Radford et al. 2021): QuickGELU, LayerNorm eps 1e-5, a LayerNorm before the
blocks (ln_pre), no patch-embedding bias; the head is the projection to the joint space, without bias."""

from typing import Any

from vit_jax.families.family import Family, TimmArchitecture, TransformersLayout, standard_presets

PIXELS = dict(pixel_mean=(0.48145466, 0.4578275, 0.40821073), pixel_std=(0.26862954, 0.26130258, 0.27577711))
# What every timm CLIP architecture builds and its tensors must show: ln_pre, and (timm) no patch bias with it.
_TIMM = dict(layer_norm_eps=1e-5, posemb_resize="torch_bicubic_antialias", pre_norm=True, patch_bias=False,
             distilled=False, **PIXELS)
_PROJECTION = {"B": 512, "L": 768}  # the joint space's width

# The presets' parameter counts: timm 1.0.31's models (pretrained=False), timm's vit_*_clip_quickgelu_224 (the head
# is the projection, with timm's bias).
_GOLDEN_PARAMS = {
    "CLIP-B_16": 86_193_152,
    "CLIP-B_32": 87_849_728,
    "CLIP-L_14": 303_966_976,
}

# -- transformers: CLIPVisionModel(WithProjection), and a whole CLIPModel read for its vision tower ----------
_LAYER = "encoder.layers.{i}"


def _config_json(config, common: dict[str, Any]) -> dict[str, Any]:
    """CLIPVisionConfig: CLIPVisionModelWithProjection with a projection (the head), else CLIPVisionModel."""
    architecture = "CLIPVisionModelWithProjection" if config.num_classes else "CLIPVisionModel"
    return {"model_type": "clip_vision_model", "architectures": [architecture],
            "projection_dim": config.num_classes or 512, **common, "intermediate_size": config.mlp_dim}


_TRANSFORMERS = TransformersLayout(
    model_type="clip_vision_model",
    classes=("CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel"),
    names=(
        ("cls_token", "embeddings.class_embedding"),
        ("patch_embed.proj.weight", "embeddings.patch_embedding.weight"),
        ("pos_embed", "embeddings.position_embedding.weight"),
        ("norm_pre.{p}", "pre_layrnorm.{p}"),
        ("blocks.{i}.norm1.{p}", f"{_LAYER}.layer_norm1.{{p}}"),
        ("blocks.{i}.attn.qkv.{p}", tuple(f"{_LAYER}.self_attn.{n}_proj.{{p}}" for n in "qkv")),
        ("blocks.{i}.attn.proj.{p}", f"{_LAYER}.self_attn.out_proj.{{p}}"),
        ("blocks.{i}.norm2.{p}", f"{_LAYER}.layer_norm2.{{p}}"),
        ("blocks.{i}.mlp.fc1.{p}", f"{_LAYER}.mlp.fc1.{{p}}"),
        ("blocks.{i}.mlp.fc2.{p}", f"{_LAYER}.mlp.fc2.{{p}}"),
        ("norm.{p}", "post_layernorm.{p}"),
        ("head.weight", "visual_projection.weight"),
    ),
    numerics={"gelu": "quick", "layer_norm_eps": 1e-5},
    # q/k/v projections with biases, a bias-free patch embedding and projection
    fixed=dict(pre_norm=True, patch_bias=False, head_bias=False, classifier="token", posemb_class_slot=True,
               layer_scale=False, distilled=False, qkv_bias=True),
    config_json=_config_json,
    chosen_for=lambda c: c.pre_norm and not c.distilled,
    wrapper="vision_model.",
    # transformers 4.x names both vision classes' tower under vision_model., and 5.x loads those names too (its
    # own save_pretrained of CLIPVisionModel drops the prefix, which 4.x cannot load)
    always_wrapped=True,
    outside=("visual_projection.",),
    unbatched=("cls_token", "pos_embed"),  # class embedding (D,), position embedding (N, D)
    whole_model=("clip", "vision_config", ("text_model.", "text_projection.", "logit_scale")),
)

FAMILY = Family(
    name="CLIP",
    summary="QuickGELU, ln_pre, no patch bias, a bias-free projection as the head",
    presets={name: dict(fields, num_classes=_PROJECTION[fields["variant"]])
             for name, fields in standard_presets(
                 "CLIP", ("B_16", "B_32", "L_14"), gelu="quick", layer_norm_eps=1e-5, pre_norm=True,
                 patch_bias=False, posemb_resize="torch_bicubic_antialias", **PIXELS).items()},
    timm_architectures=(
        TimmArchitecture(r"vit_(tiny|small|base|large|huge)_patch\d+_clip_quickgelu_\d+",
                         "vit_base_patch16_clip_quickgelu_224", dict(_TIMM, gelu="quick")),
        TimmArchitecture(r"vit_(tiny|small|base|large|huge)_patch\d+_clip_\d+", "vit_base_patch16_clip_224",
                         dict(_TIMM, gelu="exact")),
    ),
    golden_params=_GOLDEN_PARAMS,
    timm_presets={"CLIP-B_16": "vit_base_patch16_clip_quickgelu_224",
                  "CLIP-B_32": "vit_base_patch32_clip_quickgelu_224",
                  "CLIP-L_14": "vit_large_patch14_clip_quickgelu_224"},
    pixels=PIXELS,
    transformers=(_TRANSFORMERS,),
    transformers_outputs={"CLIPVisionModel": "pooler_output", "CLIPVisionModelWithProjection": "image_embeds",
                          "CLIPModel": "image_features"},
)
