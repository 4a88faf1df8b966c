"""``dae denoise``: clean image files and folders with a trained model, keeping names and bit depth."""

from __future__ import annotations

import argparse
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dae.data.images import (
    ImageFileError,
    from_unit_tensor,
    has_alpha,
    image_suffixes,
    read_image,
    to_unit_tensor,
    write_image,
)
from dae.inference.loading import CheckpointError, add_allow_class_option, load_network
from dae.inference.noise_level import estimate_sigma
from dae.inference.pretrained import default_model
from dae.inference.tiling import denoise_image, input_size
from dae.nets.noise_map import takes_noise_level

COMPARE_SUFFIX = "_compare.png"
_GAP = 2  # white pixels between the panels of a --compare picture


@dataclass(frozen=True)
class Job:
    """One image to denoise: where it is read from and where its result goes, relative to the output folder."""

    source: Path
    relative: Path


def collect_jobs(inputs: Sequence[str | Path]) -> tuple[list[Job], list[str]]:
    """Image files named directly or found (recursively, by file name ending) in folders, plus error lines.

    A file named directly is always tried, whatever its ending; inside folders only image endings count.
    A folder's images keep their paths relative to the folder.
    """
    suffixes = image_suffixes()
    jobs: list[Job] = []
    errors: list[str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                errors.append(f"{item}: no image files in this folder")
            jobs.extend(Job(p, p.relative_to(item)) for p in found)
        elif item.is_file():
            jobs.append(Job(item, Path(item.name)))
        else:
            errors.append(f"{item}: no such file or folder")
    return jobs, errors


def output_files(job: Job, out_dir: Path, compare: bool) -> list[Path]:
    """Where a job's results go: the denoised image under its relative path, then ``NAME_compare.png`` with
    ``compare``."""
    target = out_dir / job.relative
    return [target, target.with_name(target.stem + COMPARE_SUFFIX)] if compare else [target]


def plan_outputs(jobs: Sequence[Job], out_dir: Path, compare: bool) -> list[Job]:
    """The jobs, each input once (a file named both directly and in its folder is denoised once), after checking
    that no two inputs write the same output file and that no output would overwrite an input.

    Raises:
        ValueError: one line naming the two inputs and the file, before anything is written.
    """
    planned = list({(job.source.resolve(), job.relative): job for job in jobs}.values())
    inputs = {job.source.resolve(): job.source for job in planned}
    claimed: dict[Path, Path] = {}
    for job in planned:
        for output in (path.resolve() for path in output_files(job, out_dir, compare)):
            if output in inputs:
                raise ValueError(f"{job.source}: its output {output} would overwrite the input {inputs[output]}; "
                                 "choose an -o folder apart from the inputs")
            if output in claimed:
                raise ValueError(f"{claimed[output]} and {job.source} would both be written to {output}; denoise "
                                 "them into separate -o folders, or rename one")
            claimed[output] = job.source
    return planned


def add_gaussian_noise(image: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """``image + std * randn``, unclipped like the baseline's training noise, from a generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return image + std * torch.randn(image.shape, generator=generator).to(image)


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> np.ndarray:
    """Two (C, H, W) images in [0, 1] next to each other with a white gap, as 8-bit (H, W, C) pixels."""
    gap = torch.ones(left.shape[0], left.shape[1], _GAP, dtype=left.dtype, device=left.device)
    return from_unit_tensor(torch.cat([left.clamp(0, 1), gap, right], dim=2), np.dtype(np.uint8))


class Denoiser:
    """Denoises one file at a time with the network ``nets`` gives for its number of colour channels; colour
    channels only, alpha is kept as it is."""

    def __init__(self, nets: Callable[[int], torch.nn.Module], device: torch.device, batch_size: int | None,
                 add_noise: float | None, seed: int, compare: bool, tile: int | None = None,
                 margin: int | None = None, ensemble: bool = False, sigma: float | None = None) -> None:
        self.nets = nets
        self.sigma = sigma
        self.ensemble = ensemble
        self.tile = tile
        self.margin = margin
        self.device = device
        self.batch_size = batch_size
        self.add_noise = add_noise
        self.seed = seed
        self.compare = compare
        self.notices: set[str] = set()

    def __call__(self, job: Job, out_dir: Path) -> list[Path]:
        pixels = read_image(job.source)
        alpha = has_alpha(pixels.shape[2])
        image = to_unit_tensor(pixels).to(self.device)
        color = image[:-1] if alpha else image
        if self.add_noise:
            # Seeded by the file's relative path, so a file gets the same noise whatever else is in the run.
            seed = self.seed + zlib.crc32(job.relative.as_posix().encode())
            color = add_gaussian_noise(color, self.add_noise, seed)
        net = self.nets(color.shape[0])
        net_channels = getattr(net, "in_channels", 1)
        if color.shape[0] > 1 and net_channels == 1:
            self.notices.add("the network takes one channel: colour images were denoised one channel at a time")
        elif color.shape[0] == 1 and net_channels > 1:
            self.notices.add(f"the network takes {net_channels} channels: gray images were denoised as colour "
                             "images of equal channels, and the channels averaged back")
        level = self.noise_level(job, net, color)
        denoised = denoise_image(net, color, self.batch_size, self.tile, self.margin, self.ensemble,
                                 level).clamp(0, 1)
        result = torch.cat([denoised, image[-1:]]) if alpha else denoised
        target, *compare = output_files(job, out_dir, self.compare)
        written = [write_image(target, from_unit_tensor(result, pixels.dtype))]
        written.extend(write_image(path, side_by_side(color, denoised)) for path in compare)
        return written

    def noise_level(self, job: Job, net: torch.nn.Module, color: torch.Tensor) -> float | None:
        """The level a noise-conditioned network is told: ``sigma``, else estimated from the image (and said)."""
        if not takes_noise_level(net):
            return None
        if self.sigma is not None:
            return self.sigma
        level = estimate_sigma(color)
        tqdm.write(f"{job.source}: noise level estimated at sigma {level * 255:.1f} (0..255; --sigma sets it)",
                   file=sys.stderr)
        return level


IMAGE_KINDS = {1: "gray", 3: "colour"}  # images by their colour channels


def default_models() -> dict[str, str]:
    """The shipped models ``dae denoise`` uses without ``--ckpt``, each with the images it gets ("gray",
    "colour", or "gray and colour")."""
    kinds: dict[str, list[str]] = {}
    for channels, kind in IMAGE_KINDS.items():
        kinds.setdefault(default_model(channels), []).append(kind)
    return {name: " and ".join(names) for name, names in kinds.items()}


def pick_device(name: str) -> torch.device:
    """``auto``: the first GPU when there is one, else the CPU; any other name is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dae denoise",
        description="Denoise image files and folders (recursive) with a trained model. Images of any size; "
        "a network with a fixed input size (the baseline's 28x28) is run over overlapping tiles that are blended "
        "back together. Outputs keep their names, format and bit depth (8-bit in, 8-bit out; 16-bit PNG in, "
        "16-bit PNG out).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("--ckpt",
                        help="a run folder (uses its best checkpoint), a .ckpt file, or a model shipped with dae, for "
                        "every image (default: "
                        + "; ".join(f"{name} for {kinds} images" for name, kinds in default_models().items())
                        + ")")
    parser.add_argument("-o", "--output", required=True, help="folder for the denoised images")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps, or auto (default)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="tiles per forward pass (default: as many as hold about 64K pixels, e.g. 83 tiles "
                        "of 28x28 or 1 of 256x256; more can be faster, at the cost of memory)")
    parser.add_argument("--tile", type=int, metavar="N",
                        help="fully convolutional networks: denoise in overlapping NxN tiles instead of the whole "
                        "image, so that memory is bounded by the tile on big images")
    parser.add_argument("--tile-margin", type=int, metavar="M",
                        help="with --tile: tiles overlap by at least 2*M pixels (their step is kept on the pooling "
                        "grid), and each pixel comes from the tile in which it lies at least M pixels from the edge "
                        "(default: the network's receptive radius, at most N/32: about 1.14 times the compute of the "
                        "whole image at N 256 or 512; docs/inference.md says what each margin gives)")
    add_allow_class_option(parser)
    parser.add_argument("--add-noise", type=float, metavar="STD",
                        help="add Gaussian noise of this std (pixel range 0..1) first, to demo on clean pictures")
    parser.add_argument("--seed", type=int, default=0, help="seed of --add-noise (default 0)")
    parser.add_argument("--sigma", type=float, metavar="SIGMA",
                        help="the noise level (std on the 0..255 scale) that a noise-conditioned model is told: "
                        "higher smooths more (default: estimated from each image, and printed); a blind model "
                        "ignores it")
    parser.add_argument("--ensemble", action="store_true",
                        help="denoise each image in its 8 flips and rotations and average the results turned back "
                        "(a self-ensemble: 8 times the compute, usually a little better)")
    parser.add_argument("--compare", action="store_true",
                        help=f"also write NAME{COMPARE_SUFFIX}: the (noisy | denoised) pair side by side")
    return parser


def denoise_command(argv: Sequence[str]) -> int:
    """``dae denoise [--ckpt RUN_OR_CKPT] INPUT... -o OUTDIR``; exit code 1 when any input failed."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.tile is not None and args.tile < 8:
        parser.error(f"--tile must be >= 8 pixels, got {args.tile}")
    if args.tile_margin is not None and (args.tile is None or not 0 <= args.tile_margin < args.tile // 2):
        parser.error(f"--tile-margin needs --tile N and must lie in [0, N/2), got {args.tile_margin}")
    if args.add_noise is not None and not args.add_noise >= 0:
        parser.error(f"--add-noise must be a std >= 0, got {args.add_noise}")
    if args.sigma is not None and not 0 <= args.sigma <= 255:
        parser.error(f"--sigma is a std on the 0..255 scale of 8-bit pixels: give a number in [0, 255], got {args.sigma}")
    out_dir = Path(args.output)
    jobs, errors = collect_jobs(args.inputs)
    try:
        jobs = plan_outputs(jobs, out_dir, args.compare)
    except ValueError as e:
        parser.exit(2, f"dae denoise: error: {e}\n")
    # --ckpt for every image, else each shipped default for the images it is made for.
    names = ({args.ckpt: ""} if args.ckpt
             else {name: f", for {kinds} images" for name, kinds in default_models().items()})
    try:
        device = pick_device(args.device)
        nets = {name: load_network(name, map_location=device, allow_classes=args.allow_class) for name in names}
    except (CheckpointError, RuntimeError) as e:
        parser.exit(2, f"dae denoise: error: {e}\n")
    sigma = None if args.sigma is None else args.sigma / 255
    denoiser = Denoiser(lambda channels: nets[args.ckpt or default_model(channels)], device, args.batch_size,
                        args.add_noise, args.seed, args.compare, args.tile, args.tile_margin, args.ensemble, sigma)
    for name, net in nets.items():
        size = input_size(net)
        if size is not None and args.tile is not None:
            parser.exit(2, f"dae denoise: error: --tile is for fully convolutional networks; {type(net).__name__} "
                           f"takes {size[0]}x{size[1]} inputs and is always tiled at that size\n")
        how = (f"{size[0]}x{size[1]} tiles" if size else f"{args.tile}x{args.tile} tiles (--tile)" if args.tile
               else "whole images (fully convolutional)")
        if args.ensemble:
            how += ", self-ensemble of 8 orientations"
        if takes_noise_level(net):
            how += (f", told noise level {args.sigma:g}" if args.sigma is not None
                    else ", noise level estimated per image")
        elif args.sigma is not None:
            denoiser.notices.add(f"{type(net).__name__} ({name}) is a blind model: it ignores --sigma and "
                                 "denoises whatever level it sees")
        print(f"network: {type(net).__name__} ({name}{names[name]}) on {device}, {how}", file=sys.stderr)
    done = 0
    for job in tqdm(jobs, desc="denoising", unit="image", disable=None if len(jobs) > 1 else True):
        try:
            denoiser(job, out_dir)
            done += 1
        except ImageFileError as e:  # names its file already
            errors.append(str(e))
        except ValueError as e:
            errors.append(f"{job.source}: {e}")
    for notice in sorted(denoiser.notices):
        print(f"note: {notice}", file=sys.stderr)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"denoised {done} image(s) into {out_dir}" + (f"; {len(errors)} problem(s) above" if errors else ""))
    return 1 if errors else 0
