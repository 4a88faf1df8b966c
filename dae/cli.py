"""The ``dae`` command: LightningCLI for fit/validate/test/predict, plus commands that need no Trainer."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from dae.callbacks import (
    ImageGridCallback,
    LossPlotCallback,
    NonFiniteLossStop,
    PredictionImageWriter,
    TensorBoardRunCallback,
    write_loss_plot,
)
from dae.checkpointing import LAST_NAME, LastCheckpoint
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
    "plugins": [{"class_path": "dae.checkpointing.AtomicCheckpointIO"}],
}


def default_callbacks() -> list:
    """Callbacks every run gets: the best checkpoint (by val/loss), image grids, loss.png, TensorBoard
    hparams and restarts, the stop on a non-finite loss, and ``dae predict``'s denoised PNGs.

    ``last.ckpt`` comes from ``LastCheckpoint``, which the CLI exposes as ``last_checkpoint.*``.
    """
    return [
        ModelCheckpoint(
            monitor="val/loss",
            mode="min",
            filename="best-epoch{epoch:02d}-step{step}",
            auto_insert_metric_name=False,
            # Right after validation, so that last.ckpt (written at the epoch's end) records this epoch's best.
            save_on_train_epoch_end=False,
        ),
        ImageGridCallback(),
        LossPlotCallback(),
        TensorBoardRunCallback(),
        NonFiniteLossStop(),
        PredictionImageWriter(),
    ]


def continue_latest_run(config: Namespace) -> None:
    """With ``--ckpt_path last`` and no fixed logger version, log into the newest run folder that has a
    ``last.ckpt``, so that Lightning finds that file and the resumed run goes on in the same folder."""
    init = getattr(config.trainer.logger, "init_args", None)
    if config.get("ckpt_path") != "last" or init is None or init.get("version") is not None:
        return
    root = Path(init.get("save_dir") or ".") / str(init.get("name") or "")
    lasts = list(root.glob(f"*/checkpoints/{LAST_NAME}"))
    if lasts:
        init.version = max(lasts, key=lambda p: p.stat().st_mtime).parent.parent.name


# Options that take a class, and the module whose classes they are usually chosen from.
CLASS_OPTIONS = {"model.net": "dae.nets", "model.noise": "dae.noise"}


def module_classes(module_name: str) -> list[str]:
    """Names of the ``nn.Module`` classes defined in a module, e.g. the noise models of ``dae.noise``."""
    module = importlib.import_module(module_name)
    return [name for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module_name]


class DaeArgumentParser(LightningArgumentParser):
    """Reports a bad option with jsonargparse's message, a one-line usage instead of the 50-line one, and for
    an unknown network or noise name the classes there are to choose from."""

    def print_usage(self, file=None) -> None:
        print(f"usage: {self.prog} [--config FILE] [--KEY VALUE ...]   (--help lists every KEY)", file=file)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        for key, module_name in CLASS_OPTIONS.items():
            if f'Parser key "{key}"' in message:
                message += f"\n--{key} takes one of: {', '.join(module_classes(module_name))} (from {module_name})"
        super().error(message, ex)


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
            parser_kwargs={"prog": "dae", "description": _DESCRIPTION},
            parser_class=DaeArgumentParser,
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
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer with the config's callbacks, the progress bar among them unless the bar is switched off."""
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        if config.get("enable_progress_bar") is False:
            # --trainer.enable_progress_bar false switches the configured bar off (Lightning refuses both at once).
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return self._instantiate_trainer(config, callbacks)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc") and "://" not in ckpt_path and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        if self.subcommand == "fit":
            continue_latest_run(config)


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
    "sweep": lambda argv: importlib.import_module("dae.sweep").sweep_command(argv),  # needs the sweep extra
}


# Errors that dae's own checks raise about what the user gave it: shown as one message, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
_PACKAGE_DIR = Path(__file__).resolve().parent


def user_error(error: BaseException) -> BaseException | None:
    """The error dae's own checks raised, if ``error`` is one or was caused by one (jsonargparse wraps the errors
    of the classes it builds); ``None`` for anything else, which keeps its traceback."""
    while error is not None:
        tb = error.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if isinstance(error, USER_ERRORS) and tb is not None:
            if Path(tb.tb_frame.f_code.co_filename).resolve().parent == _PACKAGE_DIR:
                return error
        error = error.__cause__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return COMMANDS[args[0]](args[1:])
    try:
        DaeCLI(args=None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    except SIGTERMException:  # stopped on request after saving last.ckpt (see LastCheckpoint)
        return 128 + signal.SIGTERM
    except USER_ERRORS as e:
        if (cause := user_error(e)) is None:
            raise
        print(f"dae {args[0] if args else ''}: error: {cause}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
