import math

import numpy as np
import pytest
import torch

from dpscope.dynamics.findings import (depth_spearman, finding_sentences, noise_predicted_rwc,
                                       run_findings, rwc_metric_key)
from dpscope.dynamics.rwc import rwc_l1, rwc_mean_ratio, weight_scales_tensor
from dpscope.dynamics.series import DynamicsSeries, LayerInfo
from dpscope.errors import ConfigError


def ranks_pearson(values):
    """Spearman as the Pearson correlation of ranks, by hand (values without ties)."""
    ranks = np.argsort(np.argsort(values)).astype(float)
    depth = np.arange(len(values), dtype=float)
    return float(np.corrcoef(depth, ranks)[0, 1])


def test_depth_spearman_matches_the_rank_correlation_by_hand():
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.5]
    assert depth_spearman(values) == pytest.approx(ranks_pearson(values))
    assert depth_spearman([1, 2, 3, 4]) == pytest.approx(1.0)
    assert depth_spearman([4, 3, 2, 1]) == pytest.approx(-1.0)
    assert depth_spearman([2, 2, 2]) is None and depth_spearman([1, float("nan")]) is None
    # NaN layers are left out, not ranked
    assert depth_spearman([1, float("nan"), 2, 3]) == pytest.approx(1.0)


def test_metric_names_resolve_and_a_bad_one_is_refused_in_one_line():
    assert rwc_metric_key("rwc_mean") == rwc_metric_key("rwc_mean_ratio") == "rwc_mean_ratio"
    assert rwc_metric_key("rwc_l1") == "rwc_l1"
    with pytest.raises(ConfigError, match="choose rwc_l1") as error:
        rwc_metric_key("l2")
    assert "\n" not in str(error.value)


def noisy_run(scales, lr=0.5, sigma=1.2, clip=1.0, batch=256.0, steps=12, intervals=3, seed=0):
    """Weights of layers at the given scales moved by DP-SGD noise only (momentum 0), recorded
    the way the tracker records them; an independent simulation of what the formula predicts."""
    gen = torch.Generator().manual_seed(seed)
    weights = [scale * (0.5 + torch.rand(4000, generator=gen, dtype=torch.float64))
               * torch.sign(torch.randn(4000, generator=gen, dtype=torch.float64))
               for scale in scales]
    series = DynamicsSeries(layers=[LayerInfo(f"layer{i}.weight", (4000,)) for i in range(len(scales))])
    for interval in range(intervals):
        start = [w.clone() for w in weights]
        for _ in range(steps):
            for w in weights:
                w -= lr * sigma * clip * torch.randn(w.shape, generator=gen, dtype=torch.float64) / batch
        scale_rows = [weight_scales_tensor(s).tolist() for s in start]
        values = {"rwc_l1": [rwc_l1(w, s) for w, s in zip(weights, start)],
                  "rwc_mean_ratio": [rwc_mean_ratio(w, s) for w, s in zip(weights, start)],
                  "weight_abs_mean": [r[0] for r in scale_rows],
                  "weight_inv_abs_mean": [r[1] for r in scale_rows]}
        for metric in series.layer_metrics:
            series.layer_metrics[metric].append(values.get(metric, [math.nan] * len(scales)))
        series.points.append({"epoch": interval + 1, "step": (interval + 1) * steps,
                              "steps": steps, "examples": int(steps * batch)})
        series.grad_norm_source.append("none")
    info = {"epsilon": 8.0, "noise_multiplier": sigma, "max_grad_norm": clip, "lr": lr,
            "expected_batch_size": batch, "momentum": 0.0, "optimizer": "sgd"}
    return series, info


@pytest.mark.parametrize("metric", ["rwc_l1", "rwc_mean_ratio"])
def test_noise_prediction_matches_a_simulation_of_noise_only_updates(metric):
    series, info = noisy_run([0.5, 0.2, 0.1])  # noise small against the weights: none near 0
    predicted = noise_predicted_rwc(series, info, metric)
    observed = series.matrix(metric)
    assert predicted.shape == observed.shape == (3, 3)
    np.testing.assert_allclose(observed, predicted, rtol=0.05)
    # smaller weights, same noise: larger RWC, by the weights' scale
    assert observed[0].mean() < observed[1].mean() < observed[2].mean()


def test_no_noise_prediction_without_privacy_sgd_or_weight_scales():
    series, info = noisy_run([0.1], intervals=1)
    assert noise_predicted_rwc(series, {**info, "noise_multiplier": None}, "rwc_l1") is None
    assert noise_predicted_rwc(series, {**info, "optimizer": "adam"}, "rwc_l1") is None
    series.layer_metrics["weight_abs_mean"] = []  # a file recorded before the scales existed
    assert noise_predicted_rwc(series, info, "rwc_l1") is None


def test_findings_of_a_noise_only_run_and_a_run_whose_early_layers_move_most():
    private_series, info = noisy_run([0.5, 0.2, 0.1, 0.05, 0.02], steps=4, intervals=2)
    private = run_findings("p", "ε=8 · m · d", private_series, info)
    assert private.private and private.spearman["rwc_l1"] == pytest.approx(1.0)
    assert private.top_layers["rwc_l1"] == ["layer4", "layer3", "layer2"]
    assert private.noise_ratio["rwc_l1"]["median"] == pytest.approx(1.0, abs=0.05)
    assert private.spearman_noise["rwc_l1"] == pytest.approx(1.0)

    public_series, _ = noisy_run([0.02, 0.05, 0.1, 0.2, 0.5], steps=4, intervals=2, seed=1)
    public = run_findings("n", "non-private · m · d", public_series, {"epsilon": None})
    assert not public.private and public.noise_ratio == {}
    assert public.spearman["rwc_mean_ratio"] == pytest.approx(-1.0)

    sentences = finding_sentences([public, private], "rwc_l1")
    assert sentences[0].startswith("non-private · m · d (1 run): earlier layers change more")
    assert "later layers change more" in sentences[1]
    assert "what the DP noise alone predicts" in sentences[1]
    assert sentences[2] == "ε=8 vs non-private (m · d): DP reverses the depth trend (ρ -1.00 → +1.00)."
