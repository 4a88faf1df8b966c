"""dae: denoising autoencoders with PyTorch Lightning."""

from dae.moved import install as _install_moved_modules

__version__ = "0.1.0"

_install_moved_modules()  # class paths that older configs and checkpoints hold keep importing
