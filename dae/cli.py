"""The ``dae`` command: LightningCLI for fit/validate/test/predict, plus commands that need no Trainer."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from dae.callbacks import ImageGridCallback, LossPlotCallback, PredictionImageWriter, write_loss_plot
from dae.data import InMemoryDataModule
from dae.denoise import denoise_command
from dae.evaluate import evaluate_command
from dae.export import export_command
from dae.module import DenoisingModule

TRAINER_DEFAULTS = {
    "max_epochs": 10,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
}


def default_callbacks() -> list:
    """Callbacks every run gets: best (by val/loss) and last checkpoints, the image grid, loss.png, and
    ``dae predict``'s denoised PNGs."""
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
        PredictionImageWriter(),
    ]


# Lightning's own default bar (rich) is redrawn up to 100 times a second by a thread of its own and reads every
# metric each step (a host sync on a GPU); on a 2-core CPU that thread takes time from the training threads.
# tqdm redrawn every 20 steps (a few times a second here) does its little work between steps (BENCHMARKS.md).
PROGRESS_BAR_DEFAULT = {
    "class_path": "lightning.pytorch.callbacks.TQDMProgressBar",
    "init_args": {"refresh_rate": 20},
}


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

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The bar is a config section of its own (progress_bar: class_path/init_args), e.g.
        # --progress_bar.refresh_rate 100, or --progress_bar RichProgressBar.
        parser.add_lightning_class_args(ProgressBar, "progress_bar", subclass_mode=True)
        parser.set_defaults({"progress_bar": PROGRESS_BAR_DEFAULT})
        # The network's channel count follows the data (1 for MNIST-format sets, data.channels for image
        # folders), whatever the config says, so the two cannot disagree. Every dae network takes in_channels.
        parser.link_arguments("data.channels", "model.net.init_args.in_channels", apply_on="instantiate")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer with the config's callbacks, the progress bar among them unless the bar is switched off."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if config.get("enable_progress_bar") is False:
            # --trainer.enable_progress_bar false switches the configured bar off (Lightning refuses both at once).
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return self._instantiate_trainer(config, callbacks)


_DESCRIPTION = (
    "Train, evaluate and use denoising autoencoders. Trainer commands: fit, validate, test, predict "
    "(e.g. dae fit --config configs/mnist.yaml). Other commands: dae plot RUN_DIR, dae evaluate CKPT ..., "
    "dae denoise --ckpt RUN INPUT... -o OUTDIR, dae export --ckpt RUN --format onnx -o FILE (each has --help)."
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


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "plot": plot_command,
    "evaluate": evaluate_command,
    "denoise": denoise_command,
    "export": export_command,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]](args[1:])
    DaeCLI(args=None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    return 0


if __name__ == "__main__":
    sys.exit(main())
