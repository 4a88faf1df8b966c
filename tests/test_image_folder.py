import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from dae.image_folder import ImageFolderDataModule, decode_image
from dae.module import DenoisingModule
from dae.nets import ConvAutoencoder
from tests.idx import IMAGE_SIZE, synthetic_images, synthetic_rgb, write_image_folder

ROOT = Path(__file__).resolve().parents[1]


def make_dm(folder, **kwargs):
    kwargs.setdefault("channels", 3)
    kwargs.setdefault("patch_size", 28)
    return ImageFolderDataModule(data_dir=str(folder), **kwargs)


def all_pixels(images) -> set[bytes]:
    return {bytes(img.numpy()) for img in images}


def test_decode_converts_between_gray_and_rgb_and_scales_16_bit(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    as_rgb = decode_image(tmp_path / "rgb.png", 3)
    assert as_rgb.dtype == torch.uint8 and as_rgb.shape == (3, 5, 7)
    assert as_rgb[:, 0, 0].tolist() == [200, 100, 50]
    gray = decode_image(tmp_path / "rgb.png", 1)
    assert gray.shape == (1, 5, 7) and gray[0, 0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    Image.fromarray(np.full((4, 4), 90, np.uint8)).save(tmp_path / "gray.bmp")
    assert decode_image(tmp_path / "gray.bmp", 3)[:, 0, 0].tolist() == [90, 90, 90]
    wide = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")  # a 16-bit gray PNG
    assert decode_image(tmp_path / "wide.png", 1)[0, 0].tolist() == [0, 100, 255]


def test_every_format_is_found_recursively(tmp_path):
    image = synthetic_images(1, 32, seed=5)[0]
    for i, name in enumerate(["a.png", "b/c.jpg", "b/d/e.JPEG", "f.tif", "g.tiff", "h.bmp"]):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(image, i, axis=1)).save(tmp_path / name)
    dm = make_dm(tmp_path, channels=1, val_split=1, test_split=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here is skipped
        dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 1, 1)


def test_split_is_seeded_disjoint_and_covers_every_image(image_dir):
    a, b, c = make_dm(image_dir), make_dm(image_dir), make_dm(image_dir, split_seed=7)
    for dm in (a, b, c):
        dm.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (24, 3, 3)
    assert torch.equal(a.val_set.images, b.val_set.images) and torch.equal(a.test_set.images, b.test_set.images)
    assert not torch.equal(a.test_set.images, c.test_set.images)
    train, val, test = (all_pixels(s) for s in (a.train_set.images, a.val_set.images, a.test_set.images))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 30


def test_training_gets_random_crops_and_evaluation_fixed_centre_crops(image_dir):
    (height, width), top, left = IMAGE_SIZE, (IMAGE_SIZE[0] - 28) // 2, (IMAGE_SIZE[1] - 28) // 2
    centres = [a[top : top + 28, left : left + 28].transpose(2, 0, 1) for a in synthetic_rgb(30, IMAGE_SIZE)]
    originals = {np.ascontiguousarray(c).tobytes() for c in centres}
    dm = make_dm(image_dir, batch_size=8, patches_per_image=4)
    dm.setup()
    assert len(dm.train_set) == 24 * 4
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.uint8 and batch.shape == (8, 3, 28, 28)
    # Many crop positions per image, so repeated crops of one image differ.
    assert (height - 27) * (width - 27) > 100
    torch.manual_seed(0)
    first = torch.stack([dm.train_set[0] for _ in range(10)])
    assert len({bytes(p.numpy()) for p in first}) > 5
    # Validation and test crops are the exact centres of their images.
    val = torch.cat(list(dm.val_dataloader()))
    assert val.shape == (3, 3, 28, 28) and torch.equal(val, dm.val_set.images)
    assert all_pixels(val) <= originals and all_pixels(dm.test_set.images) <= originals


def test_gray_channel_setting_converts_rgb_files(image_dir):
    dm = make_dm(image_dir, channels=1)
    dm.setup("test")
    assert dm.test_set.images.shape == (3, 1, 28, 28) and dm.channels == 1


def test_unreadable_files_are_skipped_with_one_counting_warning(tmp_path):
    write_image_folder(tmp_path, n=6)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    jpeg = tmp_path / "nested" / "cut.jpg"
    Image.fromarray(synthetic_images(1, 64)[0]).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated
    Image.fromarray(np.zeros((10, 50), np.uint8)).save(tmp_path / "tiny.png")  # smaller than the patch
    dm = make_dm(tmp_path, val_split=1, test_split=1)
    with pytest.warns(UserWarning) as record:
        dm.setup()
    messages = [str(w.message) for w in record if "image folder" in str(w.message)]
    assert len(messages) == 1
    message = messages[0]
    assert "skipped 4 of 10 files" in message and "3 not readable" in message and "1 smaller than the 28x28" in message
    for name in ("notes.txt", "broken.png", "nested/cut.jpg", "tiny.png"):
        assert name in message
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 6


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no usable images in .*empty \(searched recursively.*\.png.*0 files"):
        make_dm(tmp_path / "empty").setup()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no usable images.*1 files found, 1 not readable.*a\.txt"):
        make_dm(tmp_path / "junk").setup()
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        make_dm(tmp_path / "nowhere").setup()
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        make_dm(tmp_path / "file.png")


@pytest.mark.parametrize(
    "kwargs,match",
    [({"channels": 2}, "channels must be 1 .* or 3"), ({"patch_size": 0}, "patch_size"),
     ({"patches_per_image": 0}, "patches_per_image"), ({"val_split": 0}, "val_split as a count"),
     ({"test_split": 1.0}, "test_split as a fraction"), ({"batch_size": 0}, "batch_size")],
)
def test_bad_arguments_are_refused(image_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dm(image_dir, **kwargs)


def test_splits_too_big_for_the_folder_are_refused(image_dir):
    with pytest.raises(ValueError, match="test_split=30 leaves no images.*30 images"):
        make_dm(image_dir, test_split=30).setup()


def test_network_with_other_channel_count_is_refused_before_training(image_dir, tiny_trainer):
    module = DenoisingModule(net=ConvAutoencoder(in_channels=1))
    with pytest.raises(ValueError, match="data has 3 channels but the network takes 1.*in_channels"):
        tiny_trainer().fit(module, make_dm(image_dir, channels=3))


def test_fit_on_rgb_pngs_follows_the_data_channels(image_dir, tmp_path, monkeypatch):
    from dae.callbacks import read_scalars
    from dae.cli import main

    monkeypatch.chdir(tmp_path)
    main([
        "fit", f"--config={ROOT / 'configs' / 'mnist.yaml'}",
        "--data=dae.image_folder.ImageFolderDataModule", f"--data.data_dir={image_dir}", "--data.channels=3", "--data.val_split=0.1",
        "--data.batch_size=8", "--trainer.max_epochs=2", "--trainer.limit_train_batches=3",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
    ])
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The seed config says in_channels 1; the 3-channel data overrode it, and the checkpoint says so.
    assert ckpt["hyper_parameters"]["net"]["init_args"]["in_channels"] == 3
    assert ckpt["state_dict"]["net.encoder.0.weight"].shape[1] == 3
    assert ckpt["datamodule_hyper_parameters"]["channels"] == 3
    scalars = read_scalars(run)
    assert len(scalars["val/psnr"]) == 2 and scalars["val/psnr"][-1][1] > 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["class_path"] == "dae.image_folder.ImageFolderDataModule"
