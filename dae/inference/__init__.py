"""Using a trained model: safe checkpoint loading (``loading``), denoising images of any size (``tiling``), the
noise level of an image (``noise_level``) and the models that ship with dae (``pretrained``). Nothing here imports Lightning until a whole
``DenoisingModule`` is loaded.
"""

from dae.inference.loading import (
           CheckpointError,
           load_checkpoint,
           load_model,
           load_network,
           resolve_checkpoint,
)
from dae.inference.noise_level import estimate_sigma
from dae.inference.tiling import denoise_image, input_size

__all__ = ["CheckpointError", "denoise_image", "estimate_sigma", "input_size", "load_checkpoint", "load_model", "load_network",
           "resolve_checkpoint"]
