"""Input perturbation: noise scales match the stated epsilons; guarantees say what they should."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting.pld import privacy_loss_distribution as pld
from scipy import stats

from dpscope.data import perturb as P
from dpscope.errors import ConfigError, DataError

SHAPE = (1, 28, 28)


def _images(n: int, shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def _ks_accepts_only_true_scale(noise: np.ndarray, dist: str, scale: float) -> None:
    """KS accepts the stated scale and rejects 2/3 and 3/2 of it."""
    assert stats.kstest(noise / scale, dist).pvalue > 1e-3
    for wrong in (2 / 3, 3 / 2):
        assert stats.kstest(noise / (scale * wrong), dist).pvalue < 1e-6


def test_laplace_scale_is_whole_image_l1_sensitivity_over_epsilon():
    mech = P.PixelLaplace(epsilon=2.0)
    g = mech.guarantee(SHAPE)
    assert g.sensitivity == 784 * 255
    assert g.noise_scale == pytest.approx(784 * 255 / 2.0)
    x = _images(20)
    noise = (mech.noisy(x, seed=1) - x.double()).ravel().numpy()
    # Laplace(b): mean |X| = b
    assert np.abs(noise).mean() == pytest.approx(g.noise_scale, rel=0.02)
    _ks_accepts_only_true_scale(noise, "laplace", g.noise_scale)


def test_laplace_guarantee_is_image_level_ldp_for_any_two_images():
    g = P.PixelLaplace(epsilon=1.0).guarantee((3, 8, 8)).to_dict()
    assert g["kind"] == "image-level epsilon-LDP"
    assert (g["epsilon"], g["delta"]) == (1.0, 0.0)
    assert "any two images" in g["neighbouring"]
    assert g["sensitivity"] == 3 * 8 * 8 * 255 and g["sensitivity_norm"] == "L1"
    json.dumps(g)


def _laplace_log_ratio(y: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, b: float):
    """log p(y | x1) - log p(y | x2) per image for per-value Laplace(b) noise."""
    return ((y - x2).abs() - (y - x1).abs()).sum(dim=(1, 2, 3)) / b


def test_laplace_privacy_loss_between_most_distant_images_reaches_but_never_exceeds_epsilon():
    mech = P.PixelLaplace(epsilon=0.5)
    dark, bright = torch.zeros(200, 1, 4, 4), torch.full((200, 1, 4, 4), 255.0)
    b = mech.guarantee((1, 4, 4)).noise_scale
    loss = _laplace_log_ratio(mech.noisy(dark, 0), dark, bright, b)
    assert loss.max() <= 0.5 + 1e-9
    darker = torch.full((1, 1, 4, 4), -1.0)  # an output below every pixel: the worst case
    assert _laplace_log_ratio(darker, dark[:1], bright[:1], b).item() == pytest.approx(0.5)


def test_dp_pix_privacy_loss_for_m_changed_pixels_never_exceeds_epsilon():
    mech = P.DpPix(epsilon=1.0, cell_size_px=2, differing_pixels=2)
    x1 = _images(300, shape=(1, 4, 4)).double()
    x2 = x1.clone()
    x2[:, 0, 0, 0], x2[:, 0, 3, 3] = 255 - x2[:, 0, 0, 0], 255 - x2[:, 0, 3, 3]  # 2 pixels
    cells = lambda x: x.reshape(-1, 1, 2, 2, 2, 2).mean(dim=(3, 5))  # noqa: E731
    y = cells(mech.noisy(x1, 1))
    loss = _laplace_log_ratio(y, cells(x1), cells(x2), mech.guarantee((1, 4, 4)).noise_scale)
    assert loss.max() <= 1.0 + 1e-9


def test_paper_mechanism_output_is_impossible_under_an_image_one_pixel_away():
    """A uniform shift of x1 is never a uniform shift of x2: infinite privacy loss."""
    mech = P.PaperBrightnessShift(epsilon=0.1)
    x1 = _images(50).double()
    x2 = x1.clone()
    x2[:, 0, 5, 5] = (x2[:, 0, 5, 5] + 1) % 256
    residual = mech.noisy(x1, 2) - x2  # would be one constant per image if x2 were the input
    spread = residual.amax(dim=(1, 2, 3)) - residual.amin(dim=(1, 2, 3))
    assert (spread > 0.5).all()


def test_gaussian_sigma_matches_stated_std_and_ks():
    mech = P.PixelGaussian(epsilon=3.0, delta=1e-5)
    g = mech.guarantee(SHAPE)
    assert g.sensitivity == pytest.approx(28 * 255)
    x = _images(20)
    noise = (mech.noisy(x, seed=2) - x.double()).ravel().numpy()
    assert noise.std() == pytest.approx(g.noise_scale, rel=0.02)
    _ks_accepts_only_true_scale(noise, "norm", g.noise_scale)


@pytest.mark.parametrize("epsilon,delta", [(0.5, 1e-5), (1.0, 1e-6), (8.0, 1e-3)])
def test_gaussian_epsilon_equals_direct_dp_accounting_computation(epsilon, delta):
    g = P.PixelGaussian(epsilon=epsilon, delta=delta).guarantee(SHAPE)
    # the PLD of this Gaussian with this sensitivity, independent of the analytic calibration
    direct = pld.from_gaussian_mechanism(
        g.noise_scale, sensitivity=g.sensitivity, value_discretization_interval=1e-4
    ).get_epsilon_for_delta(delta)
    assert g.epsilon == pytest.approx(direct, rel=1e-3)
    assert g.epsilon == pytest.approx(epsilon, rel=1e-6)
    assert g.noise_scale == pytest.approx(
        g.sensitivity * dp_accounting.get_sigma_gaussian(epsilon, delta), rel=1e-12)


def test_gaussian_delta_matches_balle_wang_closed_form():
    """delta(eps) = Phi(s/2 - eps/s) - e^eps Phi(-s/2 - eps/s), s = sensitivity/sigma."""
    g = P.PixelGaussian(epsilon=1.0, delta=1e-5).guarantee(SHAPE)
    s = g.sensitivity / g.noise_scale
    closed = stats.norm.cdf(s / 2 - 1.0 / s) - math.e * stats.norm.cdf(-s / 2 - 1.0 / s)
    assert closed == pytest.approx(1e-5, rel=1e-4)


def test_dp_pix_output_is_constant_on_each_cell():
    mech = P.DpPix(epsilon=1.0, cell_size_px=4)
    out = mech.apply(_images(5), seed=3)
    cells = out.reshape(5, 1, 7, 4, 7, 4)
    assert (cells == cells[:, :, :, :1, :, :1]).all()
    raw = mech.noisy(_images(5), seed=3).reshape(5, 1, 7, 4, 7, 4)
    assert (raw == raw[:, :, :, :1, :, :1]).all()


def test_dp_pix_noise_on_cell_means_has_stated_laplace_scale():
    mech = P.DpPix(epsilon=0.5, cell_size_px=2, differing_pixels=3)
    g = mech.guarantee(SHAPE)
    assert g.noise_scale == pytest.approx(255 * 3 / (4 * 0.5))
    x = _images(30)
    means = x.double().reshape(30, 1, 14, 2, 14, 2).mean(dim=(3, 5))
    raw = mech.noisy(x, seed=4)[:, :, ::2, ::2]
    noise = (raw - means).ravel().numpy()
    assert np.abs(noise).mean() == pytest.approx(g.noise_scale, rel=0.03)
    _ks_accepts_only_true_scale(noise, "laplace", g.noise_scale)


def test_dp_pix_guarantee_is_m_neighbourhood_and_scales_with_channels():
    g = P.DpPix(epsilon=2.0, cell_size_px=4, differing_pixels=2).guarantee((3, 8, 8))
    assert g.kind == "m-neighborhood DP (images differing in up to m pixels)"
    assert "up to m = 2 pixels" in g.neighbouring
    assert g.sensitivity == pytest.approx(3 * 255 * 2 / 16)
    assert g.noise_scale == pytest.approx(3 * 255 * 2 / (16 * 2.0))


def test_dp_pix_refuses_cells_that_do_not_tile_the_image():
    with pytest.raises(ConfigError, match=r"does not divide.*\[1, 2, 4, 7, 14, 28\]"):
        P.DpPix(epsilon=1.0, cell_size_px=5).apply(_images(1), seed=0)


def test_paper_mechanism_adds_one_laplace_constant_per_image():
    mech = P.PaperBrightnessShift(epsilon=1.0)
    x = _images(2000, shape=(1, 4, 4))
    shift = mech.noisy(x, seed=5) - x.double()
    per_image = shift[:, :1, :1, :1]
    # equal up to float64 rounding of (x + c) - x; distinct images get distinct constants
    torch.testing.assert_close(shift, per_image.expand_as(shift), rtol=0, atol=1e-9)
    assert per_image.unique().numel() == len(x)
    _ks_accepts_only_true_scale(per_image.ravel().numpy(), "laplace", 255.0)


def test_paper_mechanism_guarantee_says_it_is_not_image_level_privacy():
    g = P.PaperBrightnessShift(epsilon=0.5).guarantee(SHAPE).to_dict()
    assert g["kind"] == "NOT image-level privacy"
    assert g["epsilon"] is None and g["delta"] is None
    assert "brightness shift" in g["note"] and g["noise_scale"] == 510.0
    assert P.PaperBrightnessShift.training_images_only


def test_apply_clips_rounds_and_keeps_library_and_layout():
    x = _images(3)
    for mech in (P.PixelLaplace(1.0), P.PixelGaussian(1.0, 1e-5), P.DpPix(1.0),
                 P.PaperBrightnessShift(1.0)):
        raw = mech.noisy(x, seed=6)
        out = mech.apply(x, seed=6)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        assert torch.equal(out, raw.clamp(0, 255).round().to(torch.uint8))
        flt = mech.apply_float(x.numpy(), seed=6)
        assert isinstance(flt, np.ndarray) and flt.dtype == np.float32
        assert flt.min() >= 0 and flt.max() <= 255
        np.testing.assert_allclose(flt, raw.clamp(0, 255).numpy(), rtol=1e-6)


def test_same_seed_same_noise_other_seed_other_noise():
    mech, x = P.DpPix(1.0), _images(2)
    assert torch.equal(mech.noisy(x, 7), mech.noisy(x, 7))
    assert not torch.equal(mech.noisy(x, 7), mech.noisy(x, 8))


def test_images_outside_pixel_range_or_wrong_layout_are_refused():
    mech = P.PixelLaplace(1.0)
    with pytest.raises(DataError, match=r"\[0, 255\]"):
        mech.apply(torch.full((1, 1, 2, 2), 300.0), 0)
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        mech.apply(torch.zeros(2, 2, 2, dtype=torch.uint8), 0)


@pytest.mark.parametrize("spec,expected", [
    ("laplace:eps=1", P.PixelLaplace(1.0)),
    ("gaussian:eps=2,delta=1e-5", P.PixelGaussian(2.0, 1e-5)),
    ("dp_pix:eps=0.5,b=7,m=2", P.DpPix(0.5, cell_size_px=7, differing_pixels=2)),
    ("singh2020_brightness_shift:epsilon=0.25", P.PaperBrightnessShift(0.25)),
    ({"name": "dp_pix", "epsilon": 1, "cell_size_px": 2}, P.DpPix(1.0, cell_size_px=2)),
])
def test_registry_parses_strings_and_dicts(spec, expected):
    mech = P.parse_mechanism(spec)
    assert mech == expected
    assert P.parse_mechanism(mech.spec()) == mech


@pytest.mark.parametrize("spec,message", [
    ("blur:eps=1", r"unknown perturbation 'blur'.*'dp_pix'"),
    ("laplace:sigma=1", r"unknown parameter 'sigma'"),
    ("laplace", r"missing parameter\(s\) \['epsilon'\]"),
    ("laplace:eps=abc", r"eps must be a number"),
    ("laplace:eps=-1", r"epsilon must be a positive number"),
    ("gaussian:eps=1,delta=2", r"delta must be in \(0, 1\)"),
    ("dp_pix:eps=1,b=2.5", r"cell_size_px must be an integer"),
    ("laplace:eps", r"expected key=value"),
])
def test_registry_errors_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=message):
        P.parse_mechanism(spec)


def _write_medmnist(path, rgb: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tail = (8, 8, 3) if rgb else (8, 8)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *tail), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("rgb", [False, True])
def test_perturb_dataset_round_trip(tmp_path, rgb):
    arrays = _write_medmnist(tmp_path / "src.npz", rgb=rgb)
    record = P.perturb_dataset(tmp_path / "src.npz", tmp_path / "out.npz", "dp_pix:eps=1,b=2",
                               seed=11)
    out = np.load(tmp_path / "out.npz")
    assert sorted(out.files) == sorted(arrays)
    for key in arrays:
        assert out[key].shape == arrays[key].shape and out[key].dtype == arrays[key].dtype
    for key in ("val_images", "test_images", "train_labels", "test_labels"):
        np.testing.assert_array_equal(out[key], arrays[key])
    assert not np.array_equal(out["train_images"], arrays["train_images"])
    layout = (lambda a: a[:, None]) if not rgb else (lambda a: a.transpose(0, 3, 1, 2))
    again = P.DpPix(1.0, cell_size_px=2).apply(layout(arrays["train_images"]),
                                                record["split_seeds"]["train"])
    np.testing.assert_array_equal(layout(out["train_images"]), again)
    on_disk = json.loads((tmp_path / "out.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert on_disk["guarantee"]["image_shape"] == ([3, 8, 8] if rgb else [1, 8, 8])
    assert on_disk["seed"] == 11 and on_disk["parameters"]["cell_size_px"] == 2


def test_perturb_dataset_record_of_training_only_mechanism_says_so(tmp_path):
    _write_medmnist(tmp_path / "src.npz")
    record = P.perturb_dataset(tmp_path / "src.npz", tmp_path / "out.npz",
                               "singh2020_brightness_shift:eps=1", seed=0)
    assert record["perturbed_splits"] == ["train"]
    assert record["unchanged_splits"] == ["val", "test"]
    assert record["applied_to"].startswith("training images only")
    assert record["guarantee"]["kind"] == "NOT image-level privacy"
    with pytest.raises(ConfigError, match="training images only"):
        P.perturb_dataset(tmp_path / "src.npz", tmp_path / "o2.npz",
                          "singh2020_brightness_shift:eps=1", seed=0, splits=("train", "test"))


def test_perturb_dataset_split_noise_does_not_depend_on_other_splits(tmp_path):
    _write_medmnist(tmp_path / "src.npz")
    P.perturb_dataset(tmp_path / "src.npz", tmp_path / "a.npz", "laplace:eps=1", seed=3)
    P.perturb_dataset(tmp_path / "src.npz", tmp_path / "b.npz", "laplace:eps=1", seed=3,
                      splits=("test", "train"))
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["train_images"], b["train_images"])


def test_perturb_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="no such npz file"):
        P.perturb_dataset(tmp_path / "nope.npz", tmp_path / "o.npz", "laplace:eps=1", seed=0)
    np.savez(tmp_path / "only_test.npz", test_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"no train_images array; present splits: \['test'\]"):
        P.perturb_dataset(tmp_path / "only_test.npz", tmp_path / "o.npz", "laplace:eps=1", 0)
    with pytest.raises(ConfigError, match="unknown split"):
        P.perturb_dataset(tmp_path / "only_test.npz", tmp_path / "o.npz", "laplace:eps=1", 0,
                          splits=("holdout",))
    assert not (tmp_path / "o.npz").exists()


def _tiny_dataset(pixel_max: float):
    from dpscope.data.dataset import Dataset, ImageSplit, channel_mean_std

    rng = torch.Generator().manual_seed(0)

    def split(n):
        images = torch.randint(0, int(pixel_max) + 1, (n, 1, 8, 8), generator=rng,
                               dtype=torch.uint8)
        return ImageSplit(images, torch.arange(n, dtype=torch.int64) % 2)

    train = split(40)
    mean, std = channel_mean_std(train.images, pixel_max)
    return Dataset("tiny", "synthetic", train, split(10), split(10), 2, ("a", "b"), mean, std,
                   pixel_max)


def test_perturb_training_images_in_memory_uses_dataset_pixel_range():
    from dpscope.data.dataset import channel_mean_std

    dataset = _tiny_dataset(pixel_max=16.0)
    private, record = P.perturb_training_images(dataset, "singh2020_brightness_shift:eps=1", 5)
    assert record["parameters"]["pixel_max"] == 16.0
    assert record["guarantee"]["noise_scale"] == 16.0
    assert record["applied_to"].startswith("training images only")
    assert record["unchanged_splits"] == ["val", "test"]
    assert private.val is dataset.val and private.test is dataset.test
    assert int(private.train.images.max()) <= 16
    expected = P.PaperBrightnessShift(1.0, pixel_max=16.0).apply(
        dataset.train.images, record["split_seeds"]["train"])
    assert torch.equal(private.train.images, expected)
    assert (private.mean, private.std) == channel_mean_std(expected, 16.0)
    assert torch.equal(private.train.labels, dataset.train.labels)


def test_pixel_max_sets_sensitivity_and_is_validated():
    assert P.PixelLaplace(1.0, pixel_max=16.0).guarantee((1, 8, 8)).sensitivity == 64 * 16
    assert P.DpPix(1.0, 2, pixel_max=16.0).guarantee((1, 8, 8)).noise_scale == 16 / 4
    with pytest.raises(ConfigError, match="pixel_max must be at most 255"):
        P.parse_mechanism("laplace:eps=1,pixel_max=1000")
    with pytest.raises(DataError, match=r"\[0, 16\].*set the mechanism's pixel_max"):
        P.PixelLaplace(1.0, pixel_max=16.0).apply(_images(1), 0)
