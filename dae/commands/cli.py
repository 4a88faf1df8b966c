"""``dae fit/validate/test/predict``: the LightningCLI, its default callback sections and run folders."""

from __future__ import annotations

import errno
import importlib
import json
import re
import signal
import sys
from pathlib import Path
from typing import NoReturn, Sequence

import torch
import yaml
from jsonargparse import ArgumentError, Namespace
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import (
    LightningArgumentParser,
    LightningCLI,
    SaveConfigCallback,
)
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dae.commands.config_files import (
    ConfigFileError,
    check_config_files,
    config_paths,
    error_line,
)
from dae.data.memory import InMemoryDataModule
from dae.inference.loading import is_module_class_of
from dae.module import DenoisingModule
from dae.training.checkpointing import DiskFullError, disk_full_message, is_disk_full
from dae.training.report import run_summary, write_test_metrics
from dae.training.runs import (
    IGNORED,
    RunLock,
    choose_run,
    clear_unstarted_run,
    flatten,
    matching_run,
    remove_if_empty,
    version_folder,
)
from dae.training.threads import cpu_has_bf16, share_cores

TRAINER_DEFAULTS = {
    "max_epochs": 10,
    "logger": {
        "class_path": "dae.training.loggers.RunLogger",
        "init_args": {"save_dir": ".", "name": "lightning_logs", "default_hp_metric": False},
    },
    "plugins": [{"class_path": "dae.training.checkpointing.AtomicCheckpointIO"}],
}

# Unmonitored, keeping one file named last.ckpt (never last-v1.ckpt beside an older one): the latest state.
_LAST = {"filename": "last", "enable_version_counter": False}

# The callbacks every run gets, each a config section of its own (in --print_config and config.yaml): change one
# with --SECTION.ARG VALUE (--last_checkpoint.every_n_train_steps 100), swap its class with --SECTION CLASS, remove
# it with --SECTION null. Further callbacks go into trainer.callbacks (--trainer.callbacks+=CLASS).
# Section: (class path, init args, help).
DEFAULT_CALLBACKS = {
    "best_checkpoint": ("lightning.pytorch.callbacks.ModelCheckpoint", {
        "monitor": "val/loss", "mode": "min", "filename": "best-epoch{epoch:02d}-step{step}",
        "auto_insert_metric_name": False, "save_on_train_epoch_end": False},
        # Right after validation, so that last.ckpt (written at the epoch's end) records this epoch's best.
        "the best checkpoint by val/loss, checkpoints/best-epochEE-stepS.ckpt, written right after validation"),
    "last_checkpoint": ("lightning.pytorch.callbacks.ModelCheckpoint", {"every_n_train_steps": 500, **_LAST},
                        "checkpoints/last.ckpt every every_n_train_steps optimizer steps (0: not within epochs)"),
    "epoch_end_checkpoint": ("lightning.pytorch.callbacks.ModelCheckpoint", _LAST,
                             "checkpoints/last.ckpt at the end of every epoch, after validation"),
    "sigterm_checkpoint": ("dae.training.checkpointing.SigtermCheckpoint", {},
                           "checkpoints/last.ckpt when SIGTERM stops training"),
    "lr_monitor": ("lightning.pytorch.callbacks.LearningRateMonitor", {"logging_interval": "step"},
                   "train/lr: the learning rate of each logged step"),
    "image_grid": ("dae.training.callbacks.ImageGridCallback", {}, "val/images: clean, noisy and denoised validation images"),
    "loss_plot": ("dae.training.callbacks.LossPlotCallback", {}, "loss.png in the run folder at the end of fit"),
    "tensorboard_run": ("dae.training.callbacks.TensorBoardRunCallback", {},
                        "TensorBoard's CUSTOM SCALARS layout, HPARAMS tab, test card and restart marks"),
    "non_finite_loss_stop": ("dae.training.callbacks.NonFiniteLossStop", {}, "stop when the training loss is NaN or inf"),
    "prediction_writer": ("dae.training.callbacks.PredictionImageWriter", {}, "dae predict: the denoised images as PNGs"),
    "core_share": ("dae.training.callbacks.CoreShareCallback", {},
                   "this process's share of the CPU cores, re-checked while other dae processes start and end"),
    # Lightning's own default bar (rich) is redrawn up to 100 times a second by a thread of its own and reads every
    # metric each step (a host sync on a GPU); on a 2-core CPU that thread takes time from the training threads.
    # tqdm redrawn every 20 steps (a few times a second here) does its little work between steps (docs/benchmarks.md).
    "progress_bar": ("dae.training.callbacks.ProgressBar", {"refresh_rate": 20},
                     "the progress bar (--trainer.enable_progress_bar false switches it off)"),
}


# What a resumed run may change besides the trainer's limits: the callbacks that observe it, and the test after fit.
RESUME_IGNORES = (*IGNORED, *DEFAULT_CALLBACKS, "test_after_fit")


def log_into_checkpoint_run(config: Namespace) -> None:
    """``dae validate/test/predict --ckpt_path RUN/checkpoints/X.ckpt`` log into RUN, so that its TensorBoard
    shows the new numbers beside the training curves, instead of into a new version folder. Only when no
    logger version is given and the checkpoint lies in a run folder's ``checkpoints/``."""
    init = getattr(config.trainer.logger, "init_args", None)
    ckpt_path = config.get("ckpt_path")
    if init is None or init.get("version") is not None or ckpt_path is None:
        return
    ckpt = Path(ckpt_path)
    if ckpt.parent.name != "checkpoints" or not ckpt.is_file():
        return
    run = ckpt.absolute().parent.parent
    init.save_dir, init.name, init.version = str(run.parent), "", run.name


class RunConfigCallback(SaveConfigCallback):
    """Saves the command's config as ``config.yaml`` in the run folder, except over a run's own config from
    another command: ``dae test`` logging into a trained run leaves the training config in place."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if stage != "fit" and (Path(trainer.log_dir or ".") / self.config_filename).is_file():
            return
        super().setup(trainer, pl_module, stage)


# Options that take a class, and the module whose classes they are usually chosen from.
CLASS_OPTIONS = {"model.net": "dae.nets", "model.noise": "dae.noise", "model.objective": "dae.objectives"}


def module_classes(module_name: str) -> list[str]:
    """Names of the ``nn.Module`` classes defined in a module, e.g. the noise models of ``dae.noise``."""
    module = importlib.import_module(module_name)
    return [name for name, obj in vars(module).items() if is_module_class_of(obj, module_name)]


def option_value(args: Sequence[str], option: str) -> str | None:
    """The value given on the command line to ``option`` (``--key value`` or ``--key=value``; the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == option and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(f"{option}="):
            value = arg[len(option) + 1:]
    return value


class DaeArgumentParser(LightningArgumentParser):
    """Reports a bad option with a one-line usage instead of the 50-line one, and for an unknown network or
    noise name given on the command line the classes there are to choose from."""

    def print_usage(self, file=None) -> None:
        print(f"usage: {self.prog} [--config FILE] [--KEY VALUE ...]   (--help lists every KEY)", file=file)

    def parse_args(self, args: Sequence[str] | None = None, *rest, **kwargs) -> Namespace:
        given = sys.argv[1:] if args is None else list(args)
        for key, module_name in CLASS_OPTIONS.items():
            value = option_value(given, f"--{key}")
            # A bare name that is none of the module's classes (paths, null and dicts are jsonargparse's to judge).
            if value and value.isidentifier() and value.lower() not in ("null", "none"):
                choices = module_classes(module_name)
                if value not in choices:
                    self.error(f"--{key} {value}: no such class. --{key} takes one of: {', '.join(choices)} (from "
                               f"{module_name}), or the full path of a class of your own (package.module.Class)")
        return super().parse_args(args, *rest, **kwargs)

    def parse_path(self, path: str | Path, *args, **kwargs) -> Namespace:
        """Read and check one ``--config`` file, so that a wrong key or value in it fails in one line naming the
        file and the key (jsonargparse's own error spans many lines and names no file)."""
        exit_on_error, self.exit_on_error = self.exit_on_error, False  # raise, instead of printing usage and exiting
        try:
            config = super().parse_path(path, *args, **kwargs)
            self.validate(config, skip_required=True)  # also refuses keys that are no option
        except (ArgumentError, TypeError, KeyError) as e:
            raise ConfigFileError(f"{path}: {error_line(str(e))}") from e
        finally:
            self.exit_on_error = exit_on_error
        for key, value in config.items():
            # A section of options (trainer, model) set to a value: jsonargparse lets it through to fail at setup.
            if key in self.groups and not isinstance(value, Namespace) and not self.is_option(key):
                raise ConfigFileError(f"{path}: {key}: expected a mapping of its options ({key}: {{OPTION: VALUE, "
                                      f"...}}), got {json.dumps(value, default=str)}")
        return config

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """A required option that a ``--config`` file sets to null is reported as that file's error."""
        if match := re.fullmatch(r"the following arguments are required: (.+)", message):
            keys = [key.split(".", 1) for key in match[1].split(", ")]  # fit.data: data, of dae fit
            required = [key[1] if len(key) == 2 and key[0] in LightningCLI.subcommands() else ".".join(key)
                        for key in keys]
            for path in reversed(config_paths(getattr(self, "args", None) or [])):
                settings = flatten(yaml.safe_load(Path(path).read_text(encoding="utf-8")))
                if nulled := [key for key in required if key in settings and settings[key] is None]:
                    raise ConfigFileError(f"{path}: {nulled[0]}: required, but this file sets it to null")
        super().error(message, ex)

    def is_option(self, key: str) -> bool:
        """Whether ``key`` is an option with a value of its own, rather than a section of options (``model``)."""
        try:
            self.get_default(key)
        except KeyError:
            return False
        return True


class DaeCLI(LightningCLI):
    """LightningCLI with dae's defaults: run folders in lightning_logs/, checkpoints, image grids, loss.png."""

    def __init__(self, args: Sequence[str] | None = None, **kwargs) -> None:
        self.run_lock: RunLock | None = None
        self.new_run = self.new_root = False  # the run folder (and lightning_logs/) this fit made
        self.chosen_version = False
        try:
            super().__init__(
                DenoisingModule,
                InMemoryDataModule,  # any of its subclasses, by class_path: MNISTDataModule, ImageFolderDataModule
                subclass_mode_data=True,
                trainer_defaults=TRAINER_DEFAULTS,
                parser_kwargs={"prog": "dae", "description": _DESCRIPTION},
                parser_class=DaeArgumentParser,
                args=args,
                **{"save_config_callback": RunConfigCallback, "save_config_kwargs": {"overwrite": True}, **kwargs},
            )
        except BaseException as e:
            trainer = getattr(self, "trainer", None)
            if self.new_run and (trainer is None or trainer.global_step == 0):
                clear_unstarted_run(self.run_lock.run)  # a failed start leaves no run folder behind
            if isinstance(e, DiskFullError) or not is_disk_full(e) or self.run_lock is None:
                raise
            run = self.run_lock.run  # e.g. the event file: say where, as for a checkpoint
            raise DiskFullError(errno.ENOSPC, disk_full_message(run, "its files", run.parent)) from e
        finally:
            if self.run_lock is not None:
                self.run_lock.release()
                if self.new_root and not self.run_lock.run.exists():
                    remove_if_empty(self.run_lock.run.parent)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key, (class_path, init_args, help) in DEFAULT_CALLBACKS.items():
            base = ProgressBar if key == "progress_bar" else Callback
            parser.add_subclass_arguments(base, key, required=False, fail_untyped=False,
                                          help=f"{help}; null removes it")
            parser.set_defaults({key: {"class_path": class_path, "init_args": dict(init_args)}})
        # The network's channel count follows the data (1 for MNIST-format sets, data.channels for image
        # folders), whatever the config says, so the two cannot disagree. Every dae network takes in_channels.
        parser.link_arguments("data.channels", "model.net.init_args.in_channels", apply_on="instantiate")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="dae fit: when training ends, score the test split with the best checkpoint, "
                                 "log the numbers into the run and print them (other commands ignore it)")

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer with trainer.callbacks and the default callbacks' sections, the progress bar among them
        unless --trainer.enable_progress_bar false switches it off (Lightning refuses both at once)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = [*(config.trainer.get("callbacks") or []), *(config.get(key) for key in DEFAULT_CALLBACKS)]
        callbacks = [c for c in callbacks if c is not None]
        if config.trainer.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        trainer = super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})
        if "bf16" in str(trainer.precision) and trainer.strategy.root_device.type == "cpu" and cpu_has_bf16() is False:
            rank_zero_warn(
                f"trainer.precision {trainer.precision} on a CPU without bfloat16 instructions (avx512_bf16, amx_bf16): "
                "bf16 is emulated here and runs many times slower than fp32; use --trainer.precision 32-true"
            )
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path not in (None, "last", "best", "hpc") and "://" not in ckpt_path and not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
        if self.subcommand == "fit":
            self.choose_run_folder(config)
        elif self.subcommand in ("validate", "test", "predict"):
            log_into_checkpoint_run(config)

    def after_fit(self) -> None:
        """With ``test_after_fit`` (the default): score the test split with the best checkpoint by val/loss (the
        final weights when there is none), log the numbers into the run, write them to ``test_metrics.json``
        there and print them with the run folder and the command that opens it in TensorBoard."""
        if not self.config[self.subcommand].get("test_after_fit") or self.trainer.interrupted:
            return
        best = next((cb.best_model_path for cb in self.trainer.checkpoint_callbacks
                     if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path), None)
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        log_dir = self.trainer.log_dir  # on every rank: under DDP this is a collective call
        if self.trainer.is_global_zero and results and log_dir is not None:
            metrics = dict(sorted(results[0].items()))
            write_test_metrics(log_dir, metrics, best)
            print(run_summary(log_dir, metrics, best))

    def choose_run_folder(self, config: Namespace) -> None:
        """Pick (and lock) the run folder of this fit: see ``dae.training.runs`` for the rule."""
        init = getattr(config.trainer.get("logger"), "init_args", None)
        if init is None or "version" not in init:
            return  # no logger, or one without run folders: Lightning's own behaviour
        root = Path(init.get("save_dir") or config.trainer.get("default_root_dir") or ".") / str(init.get("name") or "")
        current = yaml.safe_load(self.parser.dump(self.config, skip_unset=False))[self.subcommand]
        resume = config.get("ckpt_path") == "last"
        if rank_zero_only.rank != 0:
            # The job's other processes (DDP) resume what the first resumes; a new run's folder reaches them by
            # Lightning's broadcast of the log dir.
            if resume and init.get("version") is None and (found := matching_run(root, current, RESUME_IGNORES)):
                init.version = found
            return
        given = init.get("version")
        root_existed, given_existed = root.exists(), given is not None and (root / version_folder(given)).exists()
        version, resumed = choose_run(root, given, resume, current, RESUME_IGNORES)
        self.run_lock = RunLock(root / version_folder(version))
        self.run_lock.acquire()
        self.new_run, self.new_root = not (resumed or given_existed), not root_existed
        if resume and not resumed:
            rank_zero_info(f"--ckpt_path last: no run in {root} to resume; starting {version_folder(version)}")
            config.ckpt_path = None
        if init.get("version") is None:
            init.version = version
            self.chosen_version = True

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if self.chosen_version:
            # config.yaml keeps the version unset, so that dae fit --config RUN/config.yaml starts a new run.
            self.config[self.subcommand].trainer.logger.init_args.version = None


_DESCRIPTION = (
    "Train, evaluate and use denoising autoencoders. Trainer commands: fit, validate, test, predict "
    "(e.g. dae fit --config configs/mnist.yaml). Other commands: dae plot RUN_DIR, dae evaluate CKPT ..., "
    "dae denoise --ckpt RUN INPUT... -o OUTDIR, dae export --ckpt RUN --format onnx -o FILE (each has --help)."
)


# Errors that dae's own checks raise about what the user gave it: shown as one message, without a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # dae/


def user_error(error: BaseException) -> BaseException | None:
    """The error dae's own checks raised, if ``error`` is one or was caused by one (jsonargparse wraps the errors
    of the classes it builds); ``None`` for anything else, which keeps its traceback."""
    while error is not None:
        tb = error.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if isinstance(error, USER_ERRORS) and tb is not None:
            if _PACKAGE_DIR in Path(tb.tb_frame.f_code.co_filename).resolve().parents:
                return error
        error = error.__cause__
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``dae fit/validate/test/predict``: the subcommands that need a Trainer, which ``dae.commands.main`` (the
    console command) sends here."""
    share_cores()  # before any parallel work: this process's share of the cores while other dae processes run
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_config_files(args)  # a broken --config file fails here in one line that names it
        DaeCLI(args=None if argv is None else args)  # None: LightningCLI reads sys.argv itself
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # A DDP run's process group still has gloo threads running; left to the interpreter's exit they
            # are torn down in no set order, and the process can abort (SIGABRT) after a finished run.
            torch.distributed.destroy_process_group()
    except SIGTERMException:  # stopped on request after saving last.ckpt (see SigtermCheckpoint)
        return 128 + signal.SIGTERM
    except DiskFullError as e:  # one line that says where and what to free; the files written before are whole
        print(f"dae {args[0] if args else ''}: error: {e.strerror}", file=sys.stderr)
        return 1
    except USER_ERRORS as e:
        if (cause := user_error(e)) is None:
            raise
        print(f"dae {args[0] if args else ''}: error: {cause}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
