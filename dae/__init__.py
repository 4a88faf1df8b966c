"""dae: denoising autoencoders with PyTorch Lightning."""

__version__ = "0.1.0"
