"""`python -m parity convert SRC DST`: convert ViT weights between checkpoint formats."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Convert Vision Transformer weights between checkpoint formats, with the
architecture read from the tensors and the numerics of the source recorded in
a config JSON written beside DST (DST.json, or vit_config.json inside a
directory). Loading DST with that config reproduces the source's function.

formats (--from / --to):
  google-npz   Google's released .npz: flat '/'-joined Flax names; also the
               pre-Linen block numbering (MultiHeadDotProductAttention_1,
               LayerNorm_2, MlpBlock_3) and trees under opt/target/ or params/;
               bfloat16 stored as 2-byte void. Numerics: tanh GELU, eps 1e-6.
  flax         a Flax param tree: .msgpack (flax.serialization) or an orbax
               checkpoint directory (a CheckpointManager directory resolves to
               its latest step). Numerics: this project's config JSON if
               present, else Google's.
  torch        a PyTorch state dict in timm's naming (patch_embed.proj,
               blocks.{i}.attn.qkv, head): .safetensors (preferred) or
               .pt/.pth (read with torch.load(weights_only=True)).
               Numerics: exact GELU, eps 1e-6.
  timm-hub     a timm hub directory (config.json with "architecture" and
               "model_args", model.safetensors), as timm's save_for_hf writes
               and hf-hub downloads: the families' timm architectures
               (vit_jax/families) and plain ViTs. The architecture name
               decides the numerics; written back, timm.create_model(
               architecture, **model_args) loads it with strict=True.
  hf           Hugging Face ViTModel / ViTForImageClassification naming
               (vit.embeddings..., vit.encoder.layer.{i}..., classifier): a
               .safetensors/.bin file or a model directory (config.json +
               model.safetensors; written as such when DST has no weights
               extension). Numerics: from config.json if present, else exact
               GELU, eps 1e-12. config.json's model_type also reads the families'
               transformers layouts (vit_jax/families; a two-tower
               model's vision tower); --to hf keeps the family.
  torchvision  torchvision.models.vit_b_16 naming (conv_proj, class_token,
               encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight,
               heads.head): .pth/.pt/.safetensors. Numerics: exact GELU,
               eps 1e-6, ImageNet mean/std inputs.
  big-vision   Google big_vision's two-tower .npz (image tower): --to big-vision
               writes the image tower under params/img/ (pos_embedding at its
               top, MAPHead_0); read like google-npz (the text tower is
               ignored). Numerics: tanh GELU, eps 1e-6 (big_vision's only).
  vit-pytorch  lucidrains' vit_pytorch.ViT state dict (to_patch_embedding,
               transformer.layers.{i}.0.to_qkv, mlp_head): .pt/.pth/
               .safetensors. The heads are not stored: --set num_heads=N
               (default: q/k/v width / 64, the package's dim_head). Writing
               it prints the vit_pytorch.ViT(...) arguments that load the
               file with strict=True. Numerics: exact GELU, eps 1e-5.

Without --from the source format is detected from the file; without --to the
target follows DST's extension: .npz -> google-npz, .msgpack or a directory ->
flax, .safetensors/.pt/.pth -> torch.

--set FIELD=VALUE states a config field outright (JSON value, repeatable, as
in `python -m parity report`): what the tensors do not show (num_heads,
a non-square image_size, patch_size and num_channels of a vit-pytorch
patch embedding) or numerics (gelu, layer_norm_eps); one that contradicts a
tensor shape is an error.

training runs: SRC may be a train.py run directory (its --workdir), its
checkpoints/ directory or one step directory checkpoints/<step>. The params
come from one saved step, the architecture and numerics from the run's
config.json. A directory resolves to the best step by eval accuracy, else the
latest; --step N picks another. A damaged default step is named in a warning
and the newest intact step is used; a damaged --step N is an error.

checked against the source: where the library the model came from can be
imported (timm for timm hub directories and timm-named files, transformers for
transformers directories, vit-pytorch, torchvision), its own model of SRC is run
against the Flax model of the conversion on 2 seeded inputs, and so is DST
loaded strictly by its library: one line per direction ("reading checked
against timm 1.0.31: rel L2 4.4e-07 on 2 inputs"). Above 1e-5 relative L2, or a
load that leaves any weight unloaded, is an error naming the output, and
nothing is written. A library that is not installed is a one-line note;
--no-verify skips the check.

safety: weights must be floating point (int and bool tensors are refused by
name) and finite (unless --allow-nonfinite). An existing DST or config JSON
(a file, a directory, a symlink) is refused unless --overwrite, which
replaces files and directories an earlier conversion wrote (never another
directory, never a device, FIFO or socket). DST and its config JSON are
replaced together: a conversion killed between the two renames leaves a
.DST.replacing marker that readers refuse and the next conversion to DST
completes; temporaries of a killed conversion are removed by the next one.
A failed write (a full disk) prints one error line, exits 2 and leaves DST
as it was. Ctrl-C or SIGTERM exits 130 / 143 and writes nothing.

examples:
  python -m parity convert ViT-B_16.npz vit_b16.safetensors
  python -m parity convert vit_b16.safetensors hf_vit_b16/ --to hf
  python -m parity convert ViT-B_16.npz ft.npz --image-size 384 --num-classes 10
  python -m parity convert runs/digits-1 digits.safetensors --step 400
  python -m parity convert vit.pt vit.msgpack --from vit-pytorch --set num_heads=8
"""


def _image_size(text: str):
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return tuple(values)
    raise argparse.ArgumentTypeError(f"expected N or HxW, got {text!r}")


def _assignment(text: str):
    from vit_jax.config import ConfigError, parse_assignment

    try:
        return parse_assignment(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    from vit_jax.formats import FORMATS
    from vit_jax.help_format import DefaultsHelpFormatter

    parser = _Parser(
        prog="python -m parity convert",
        description=DESCRIPTION,
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint to read (file or directory)")
    parser.add_argument("dst", metavar="DST", help="where to write; nothing appears here unless conversion succeeds")
    parser.add_argument("--from", dest="from_format", choices=list(FORMATS), metavar="FMT",
                        help=f"source format, one of {', '.join(FORMATS)} (default: detected)")
    parser.add_argument("--to", dest="to_format", choices=list(FORMATS), metavar="FMT",
                        help="target format (default: from DST's extension)")
    parser.add_argument("--config", metavar="NAME|JSON",
                        help="fills what the tensors do not show: a preset name ('ViT-B_16', 'B/16') for the "
                             "number of heads of a fused-qkv file, or a config JSON that also sets numerics; "
                             "a config that contradicts a tensor shape is an error")
    parser.add_argument("--image-size", type=_image_size, metavar="N|HxW",
                        help="resize the learned position embeddings to this resolution "
                             "(Google's bilinear zoom, class token kept apart; default: the source's)")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="replace the head by a fresh zero head with N classes (0: no head; default: keep the "
                             "source's head)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_assignment,
                        metavar="FIELD=VALUE",
                        help="state a config field (JSON value, e.g. --set num_heads=8); repeatable")
    parser.add_argument("--step", type=int, metavar="N",
                        help="with a training run as SRC: the checkpoint step (default: the best by eval accuracy, "
                             "else the latest)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DST (and its config JSON): a file, or a directory an earlier "
                             "conversion wrote; without it an existing DST is refused")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="convert weights holding NaN or infinity (refused by default)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip the check against the source library (by default the Flax model is checked "
                             "against the library's own model of SRC and of the written DST, where installed)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or bad usage (2): return the code, as main(argv) -> int promises
        return int(e.code or 0)
    from parity.convert import convert
    from vit_jax.formats import ConversionError
    from vit_jax.training import cli

    progress = None if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        with cli.interruptible():
            result = convert(
                args.src, args.dst, from_format=args.from_format, to_format=args.to_format, config=args.config,
                image_size=args.image_size, num_classes=args.num_classes, progress=progress, step=args.step,
                allow_nonfinite=args.allow_nonfinite, overrides=dict(args.overrides), overwrite=args.overwrite,
                verify=args.verify,
            )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable destination, disk full
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # Ctrl-C / SIGTERM: the temporaries are already removed
        print(f"error: interrupted; nothing was written to {args.dst}", file=sys.stderr)
        return getattr(interrupt, "exit_code", 130)
    if not args.quiet:
        print(f"{result.source_format} -> {result.target_format}: {result.output} ({result.num_tensors} tensors), "
              f"config {result.config_path}")
        for line in result.checks:
            print(line)
        if result.target_format == "vit-pytorch":
            from vit_jax.formats.vit_pytorch import vit_kwargs

            arguments = ", ".join(f"{k}={v!r}" for k, v in vit_kwargs(result.config).items())
            read = "safetensors.torch.load_file" if result.output.suffix == ".safetensors" else "torch.load"
            print(f"load it with vit_pytorch.ViT({arguments}).load_state_dict({read}({str(result.output)!r}), "
                  f"strict=True)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
