"""The denoising networks: plain ``nn.Module`` s that map a noisy image batch to a clean one, one family a file.

``ConvAutoencoder`` is the baseline (28x28 only); ``UNet``, ``DnCNN``, ``DRUNet`` and ``FFDNet`` are fully
convolutional. Configs and
checkpoints name them by this package (``dae.nets.UNet``).
"""

# In the order that --model.net's error message lists them: the baseline first.
from dae.nets.autoencoder import ConvAutoencoder
from dae.nets.unet import UNet
from dae.nets.dncnn import DnCNN  # noqa: I001
from dae.nets.drunet import DRUNet
from dae.nets.ffdnet import FFDNet

__all__ = ["ConvAutoencoder", "UNet", "DnCNN", "DRUNet", "FFDNet"]
