"""Loading a trained model: resolving what names a checkpoint, reading it safely, and building its classes.

Checkpoints are loaded here for everything outside Lightning's own resume. A checkpoint may come from someone
else, so it is read with ``torch.load(weights_only=True)``: tensors and plain data only, never pickled code.
The module is rebuilt from the checkpoint's ``hyper_parameters`` (``net``/``noise``/``objective`` as plain
``{class_path, init_args}`` data, as ``dae fit`` writes them) through jsonargparse, and only from known
classes: dae's own networks, noise models and objectives (``dae.nets.*``, ``dae.noise.*``,
``dae.objectives.*``) and the classes the caller allows by name. Any other class name is refused before its
module is imported, so no import-time code of an installed package runs because a file said so.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
from torch import nn

from dae.inference.pretrained import builtin_checkpoint, is_builtin

if TYPE_CHECKING:  # imported where a checkpoint is loaded: denoising a tensor needs no Lightning
    from dae.module import DenoisingModule

REQUIRED_KEYS = ("state_dict", "hyper_parameters")
# Modules whose nn.Module classes any checkpoint may name; other classes only when the caller allows them.
KNOWN_MODULES = ("dae.nets", "dae.noise", "dae.objectives")
# What jsonargparse would take for a class and import: a dotted Python name such as ``mypkg.nets.MyNet``.
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class CheckpointError(ValueError):
    """A checkpoint file (or run folder) that cannot be used; the message names the file and the fix."""


def _best_from_last(last: Path, candidates: list[Path]) -> Path | None:
    """The best checkpoint that ModelCheckpoint recorded in ``last.ckpt``, if it is one of ``candidates``."""
    try:
        callbacks = load_checkpoint(last).get("callbacks")
    except CheckpointError:
        return None
    by_name = {p.name: p for p in candidates}
    for state in callbacks.values() if isinstance(callbacks, dict) else ():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if isinstance(best, str) and Path(best).name in by_name:
            return by_name[Path(best).name]
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, a run folder's best checkpoint, or a model shipped with dae (``builtin:NAME``,
    see ``dae.inference.pretrained``).

    A run folder (``lightning_logs/version_N``, or its ``checkpoints/`` folder) resolves to
    ``checkpoints/best-*.ckpt``; when a run kept several, the one its ``last.ckpt`` records as best (else
    the newest). Without any ``best-*.ckpt`` it falls back to ``last.ckpt``.
    """
    if is_builtin(str(path)):
        try:
            return builtin_checkpoint(str(path))
        except ValueError as e:
            raise CheckpointError(str(e)) from e
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    if len(best) > 1 and last.is_file():
        return _best_from_last(last, best) or best[-1]
    if best:
        return best[-1]
    if last.is_file():
        return last
    raise CheckpointError(
        f"{path}: no checkpoint in this folder (looked for checkpoints/best-*.ckpt and checkpoints/last.ckpt); "
        "give a run folder such as lightning_logs/version_0 or a .ckpt file"
    )


def _load_failure(error: Exception) -> str:
    """What a failed ``torch.load(weights_only=True)`` means for the user, in one sentence."""
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if code:
        return (f"it holds pickled code or objects ({code.group(1)}), which are never loaded from a file that "
                "may come from someone else (weights_only=True); use a .ckpt file written by dae fit")
    first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if "Weights only load failed" in first_line:
        reason = "unreadable pickle data"
    else:  # keep torch's first sentence, e.g. "PytorchStreamReader failed reading zip archive: ..."
        reason = first_line.split(". ")[0].rstrip(".") or f"the file ends too early ({type(error).__name__})"
    return f"{reason}. The file is corrupt, truncated or not a PyTorch checkpoint; use a .ckpt file written by dae fit"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a dae checkpoint file as plain data (``weights_only=True``), refusing anything else clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; give a .ckpt file written by dae fit or a run folder")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling fails in many ways; all mean "this file cannot be used"
        raise CheckpointError(f"{path}: cannot load this checkpoint: {_load_failure(e)}") from e
    missing = [k for k in REQUIRED_KEYS if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise CheckpointError(f"{path}: not a dae checkpoint (no {' or '.join(missing)}); "
                              "use a .ckpt file written by dae fit")
    return ckpt


def _class_names(value: Any) -> Iterator[str]:
    """Every class name in a plain-data config: ``class_path`` values and dotted strings, which jsonargparse
    would resolve (importing their module) wherever a class is expected."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _class_names(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _class_names(item)
    elif isinstance(value, str) and _DOTTED_NAME.fullmatch(value):
        yield value


def is_module_class_of(obj: Any, module: str) -> bool:
    """Whether ``obj`` is an ``nn.Module`` class defined in ``module`` or, for a package, in one of its modules
    (``dae.nets.UNet`` is defined in ``dae.nets.unet``); a class merely imported there is not."""
    defined_there = isinstance(obj, type) and (obj.__module__ == module or obj.__module__.startswith(module + "."))
    return defined_there and issubclass(obj, nn.Module)


def is_known_class(name: str, allow: Iterable[str] = ()) -> bool:
    """Whether a checkpoint may name ``name``: an nn.Module class of ``KNOWN_MODULES``, or one in ``allow``.

    Nothing outside dae is imported to find out; ``allow`` holds full names such as ``mypkg.nets.MyNet``.
    """
    if name in set(allow):
        return True
    module, _, attribute = name.rpartition(".")
    if not any(module == known or module.startswith(known + ".") for known in KNOWN_MODULES):
        return False
    try:
        obj = getattr(importlib.import_module(module), attribute, None)
    except ImportError:
        return False
    return is_module_class_of(obj, module)


def check_known_classes(config: dict[str, Any], path: Path, allow: Iterable[str] = ()) -> None:
    """Refuse a checkpoint config that names a class other than dae's own and the ``allow``-ed ones."""
    allow = tuple(allow)
    for name in _class_names(config):
        if not is_known_class(name, allow):
            raise CheckpointError(
                f"{path}: its hyper_parameters name the class {name}, which is not one of dae's networks, noise "
                f"models or objectives ({', '.join(m + '.*' for m in KNOWN_MODULES)}), so it is not built; if you trust this "
                f"checkpoint and that code, allow it by name: --allow-class {name}"
            )


def add_allow_class_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-class CLASS`` (repeatable) for the commands that load checkpoints; read as ``args.allow_class``."""
    parser.add_argument("--allow-class", action="append", default=[], metavar="CLASS",
                        help="also build this class (full name, e.g. mypkg.nets.MyNet) when a checkpoint names it; "
                        f"by default only {' and '.join(m + '.*' for m in KNOWN_MODULES)} are built (repeatable)")


def _read_checked(path: str | os.PathLike, map_location: str | torch.device,
                  allow_classes: Iterable[str]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The checkpoint file ``path`` resolves to, its contents, and its hyper-parameters without private keys, once
    every class they name is a known one."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location)
    hparams = ckpt["hyper_parameters"]
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: not a dae checkpoint (hyper_parameters is not a mapping)")
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path}: not a dae checkpoint (state_dict is not a mapping of tensors)")
    # Private keys such as Lightning's "_instantiator" name code to call: never trust them from a file.
    config = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    check_known_classes(config, path, allow_classes)
    return path, ckpt, config


def _load_weights(path: Path, module: nn.Module, state_dict: dict[str, Any]) -> None:
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as e:  # wrong shapes, or values that are not tensors
        raise CheckpointError(f"{path}: its weights do not fit the network its hyper_parameters describe: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _not_built(path: Path, what: str, error: Exception) -> CheckpointError:
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return CheckpointError(f"{path}: its hyper_parameters do not describe {what}: {reason}")


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               allow_classes: Iterable[str] = ()) -> DenoisingModule:
    """The trained ``DenoisingModule`` (network and noise model) from a ``.ckpt`` file or run folder.

    The module is in eval mode on ``map_location``, never compiled (whatever the checkpoint says). Its classes
    must be dae's own (``dae.nets.*``, ``dae.noise.*``, ``dae.objectives.*``) or named in ``allow_classes`` (full names such as
    ``mypkg.nets.MyNet``). Raises ``CheckpointError`` naming the file when it is missing, corrupt, not a dae
    checkpoint, holds pickled code, names another class, or its weights do not fit its network.
    """
    path, ckpt, config = _read_checked(path, map_location, allow_classes)
    from lightning.pytorch.cli import instantiate_module

    from dae.module import DenoisingModule

    config["compile"] = False  # using a model needs no compiler, and its first call would take long
    try:
        module = instantiate_module(DenoisingModule, config)
    except Exception as e:  # noqa: BLE001 - jsonargparse and constructors raise various types
        raise _not_built(path, "a DenoisingModule", e) from e
    _load_weights(path, module, ckpt["state_dict"])
    return module.to(map_location).eval()


def load_network(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                 allow_classes: Iterable[str] = ()) -> nn.Module:
    """The trained network alone (``load_model(path).net``), in eval mode, built without importing Lightning:
    what denoising and export need, in a process that holds less memory. Same checks and errors as
    ``load_model``."""
    path, ckpt, config = _read_checked(path, map_location, allow_classes)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)  # class_path + init_args, as LightningCLI builds it
    try:
        net = parser.instantiate_classes(parser.parse_object({"net": config.get("net")})).net
    except Exception as e:  # noqa: BLE001 - jsonargparse and constructors raise various types
        raise _not_built(path, "a network", e) from e
    prefix = "net."
    weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if str(k).startswith(prefix)}
    _load_weights(path, net, weights)
    if config.get("channels_last", True):  # the layout DenoisingModule trains and runs it in: the same numbers
        net.to(memory_format=torch.channels_last)
    return net.to(map_location).eval()


# What using a trained model needs; the rest of a training checkpoint (optimizer state, callbacks, loops) is
# for resuming the training.
MODEL_KEYS = ("state_dict", "hyper_parameters", "datamodule_hyper_parameters", "pytorch-lightning_version")


def slim_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write the weights and hyper-parameters of the dae checkpoint ``source`` alone to ``target``, a file that
    ``dae denoise``, ``dae evaluate`` and ``dae export`` use like the original (about a third of its size)."""
    ckpt = load_checkpoint(resolve_checkpoint(source))
    target = Path(target)
    torch.save({key: ckpt[key] for key in MODEL_KEYS if key in ckpt}, target)
    return target
