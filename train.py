"""Train or fine-tune a Vision Transformer with optax under jit, one device to many hosts.

    python train.py                       # small ViT from scratch on scikit-learn's digits
    python train.py --help                # every option
    python train.py --dataset folder --data-path ~/flowers --init ViT-B_16.npz \\
        --model B/16 --image-size 224 --lr 3e-3 --batch-size 512 --steps 2000
    python train.py --resume --workdir runs/NAME
    python train.py --eval-only --workdir runs/NAME
    python train.py predict --checkpoint runs/NAME image.png ...

The command only: the training is the library, `vit_jax.training` (`train(...)`
from Python), and this is `vit-train` once the package is installed.
Ctrl-C, SIGTERM, SIGHUP or SIGQUIT end the run within seconds with exit status 128 + the signal (130, 143, 129, 131);
checkpoints already written stay, so `--resume` continues from the last one.
"""

if __name__ == "__main__":  # first, so that Ctrl-C during the imports below already ends the run cleanly
    from vit_jax.training import cli

    cli.install("train.py")

    from vit_jax.train_cli import main

    cli.exit(main(prog="train.py"))
