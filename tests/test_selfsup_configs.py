"""The self-supervised configs in configs/selfsup/: overlays over an experiment config, each runs offline."""


import pytest

from tests.test_configs import CONFIGS, composed, fast_dev_run, load

SELFSUP = CONFIGS / "selfsup"
METHODS = {"noise2noise": "Noise2Noise", "noise2self": "Noise2Self", "neighbor2neighbor": "Neighbor2Neighbor",
           "r2r": "R2R", "supervised_fixed": "Supervised"}
BASES = {**{name: CONFIGS / "unet.yaml" for name in METHODS}, "noisy_photos": CONFIGS / "image_folder.yaml"}


def test_every_method_has_an_overlay_that_names_only_the_objective_and_the_data_mode():
    assert sorted(p.stem for p in SELFSUP.glob("*.yaml")) == sorted(BASES)
    for name, objective in METHODS.items():
        config = load(SELFSUP / f"{name}.yaml")
        assert config["model"]["objective"]["class_path"] == f"dae.objectives.{objective}"
        net = {"net": {"init_args": {"residual": False}}} if name == "noise2self" else {}  # see Noise2Self.check
        assert config == {"model": {"objective": config["model"]["objective"], **net},
                          "data": {"init_args": {"fixed_noise": True}}}
    photos = load(SELFSUP / "noisy_photos.yaml")
    assert photos["data"] == {"init_args": {"noisy": True}}


def test_r2r_overlay_knows_the_noise_std_of_its_base():
    config = composed(BASES["r2r"], SELFSUP / "r2r.yaml")
    assert config["model"]["objective"]["init_args"]["sigma"] == config["model"]["noise"]["init_args"]["std"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BASES))
def test_selfsup_overlay_runs_a_fast_dev_run_over_its_base(name, mnist_dir, image_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overlay = SELFSUP / f"{name}.yaml"
    config = composed(BASES[name], overlay)
    assert config["model"]["objective"]["class_path"] == load(overlay)["model"]["objective"]["class_path"]
    assert fast_dev_run([BASES[name], overlay], mnist_dir, image_dir) == 0
