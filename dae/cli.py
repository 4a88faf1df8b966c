"""The ``dae`` command: LightningCLI for fit/validate/test/predict, plus commands that need no Trainer."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.callbacks import ModelCheckpoint

from dae.callbacks import ImageGridCallback, LossPlotCallback, write_loss_plot
from dae.data import InMemoryDataModule
from dae.evaluate import evaluate_command
from dae.module import DenoisingModule

TRAINER_DEFAULTS = {
    "max_epochs": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}


def default_callbacks() -> list:
    """Callbacks every run gets: best (by val/loss) and last checkpoints, the image grid, loss.png."""
    return [
        ModelCheckpoint(
            monitor="val/loss",
            mode="min",
            save_last=True,
            filename="best-epoch{epoch:02d}-step{step}",
            auto_insert_metric_name=False,
        ),
        ImageGridCallback(),
        LossPlotCallback(),
    ]


class DaeCLI(LightningCLI):
    """LightningCLI with dae's defaults: run folders in lightning_logs/, checkpoints, image grids, loss.png."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(
            DenoisingModule,
            InMemoryDataModule,  # any of its subclasses, by class_path: MNISTDataModule, ImageFolderDataModule
            subclass_mode_data=True,
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": default_callbacks()},
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": _DESCRIPTION},
            args=args,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:
        # The network's channel count follows the data (1 for MNIST-format sets, data.channels for image
        # folders), whatever the config says, so the two cannot disagree. Every dae network takes in_channels.
        parser.link_arguments("data.channels", "model.net.init_args.in_channels", apply_on="instantiate")


_DESCRIPTION = (
    "Train, evaluate and use denoising autoencoders. Trainer commands: fit, validate, test, predict "
    "(e.g. dae fit --config configs/mnist.yaml). Other commands: dae plot RUN_DIR, dae evaluate CKPT ... "
    "(each has --help)."
)


def plot_command(argv: Sequence[str]) -> int:
    """``dae plot RUN_DIR [-o OUT]``: redraw a run's loss.png from its TensorBoard event files."""
    parser = argparse.ArgumentParser(prog="dae plot", description=plot_command.__doc__)
    parser.add_argument("run_dir", help="a run folder, e.g. lightning_logs/version_0")
    parser.add_argument("-o", "--output", help="PNG to write (default: RUN_DIR/loss.png)")
    args = parser.parse_args(argv)
    try:
        out = write_loss_plot(args.run_dir, args.output)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"dae plot: error: {e}\n")
    print(f"wrote {out}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"plot": plot_command, "evaluate": evaluate_command}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]](args[1:])
    DaeCLI(args=None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
