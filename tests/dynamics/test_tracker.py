import io
import math

import numpy as np
import pytest
import torch

from dpscope.callbacks import StepReport
from dpscope.dynamics import (LAYER_METRICS, PER_LAYER_BOUNDS_KEY, WeightChangeTracker,
                              load_dynamics, rwc_l1, rwc_mean_ratio)
from dpscope.dynamics.series import DynamicsSeries, LayerInfo
from dynamics_loop import new_run, run_epochs


def test_tracks_only_multi_dimensional_weights_by_default():
    model, opt, state = new_run()
    tracker = WeightChangeTracker()
    tracker.on_train_start(state)
    assert tracker.series().layer_names == ["conv.weight", "fc.weight"]
    with_1d = WeightChangeTracker(include_1d=True)
    with_1d.on_train_start(state)
    assert with_1d.series().layer_names == [n for n, _ in model.named_parameters()]


def test_epoch_interval_records_one_point_per_epoch_with_every_metric():
    model, opt, state = new_run()
    tracker = WeightChangeTracker()
    tracker.on_train_start(state)
    run_epochs(tracker, model, opt, state, epochs=3)
    series = tracker.series()
    assert len(series) == 3
    assert [p["epoch"] for p in series.points] == [1, 2, 3]
    assert [p["steps"] for p in series.points] == [3, 3, 3]
    assert set(series.layer_metrics) == set(LAYER_METRICS)
    assert series.matrix("rwc_l1").shape == (2, 3)
    rows = series.rows()
    assert len(rows) == 6 and {"layer", "depth", "block", "epoch", "rwc_l1"} <= set(rows[0])


def test_every_n_steps_interval_records_at_global_step_multiples():
    model, opt, state = new_run()
    tracker = WeightChangeTracker(every_steps=2)
    tracker.on_train_start(state)
    run_epochs(tracker, model, opt, state, epochs=3)  # 9 steps -> points at 2, 4, 6, 8
    assert [p["step"] for p in tracker.series().points] == [2, 4, 6, 8]
    assert tracker.series().interval_unit == "step"


def test_rwc_is_measured_against_the_previous_interval_snapshot():
    model, opt, state = new_run()
    tracker = WeightChangeTracker()
    tracker.on_train_start(state)
    before = [model.conv.weight.detach().clone(), model.fc.weight.detach().clone()]
    run_epochs(tracker, model, opt, state, epochs=1)
    middle = [model.conv.weight.detach().clone(), model.fc.weight.detach().clone()]
    run_epochs(tracker, model, opt, state, epochs=1)
    after = [model.conv.weight.detach(), model.fc.weight.detach()]
    series = tracker.series()
    for t, (new, old) in enumerate([(middle, before), (after, middle)]):
        assert series.matrix("rwc_mean_ratio")[:, t] == pytest.approx(
            [rwc_mean_ratio(a, b) for a, b in zip(new, old)])
        assert series.matrix("rwc_l1")[:, t] == pytest.approx(
            [rwc_l1(a, b) for a, b in zip(new, old)])


def test_non_private_grad_norm_is_the_interval_mean_of_the_batch_gradient_norm():
    model, opt, state = new_run()
    tracker = WeightChangeTracker()
    tracker.on_train_start(state)
    seen = []
    run_epochs(tracker, model, opt, state, epochs=1,
               hook=lambda m, r: seen.append([m.conv.weight.grad.norm().item(),
                                              m.fc.weight.grad.norm().item()]))
    series = tracker.series()
    assert series.matrix("grad_norm")[:, 0] == pytest.approx(np.mean(seen, axis=0))
    assert series.grad_norm_source == ["batch_mean_gradient"]
    for private_only in ("clipped_share", "noise_to_signal", "clipped_fraction_per_layer"):
        assert np.isnan(series.matrix(private_only)).all()
    assert math.isnan(series.global_metrics["clipped_fraction"][0])


def _private_report(step, sq_a, sq_b, **kw):
    return StepReport(step=step, epoch=0, batch_size=len(sq_a), loss=0.0,
                      per_param_sq_norms={"a.weight": torch.tensor(sq_a), "b.weight": torch.tensor(sq_b)},
                      **kw)


class _TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(2, 3, bias=False)  # 6 weights
        self.b = torch.nn.Linear(3, 4, bias=False)  # 12 weights


def test_private_diagnostics_match_hand_computed_values():
    from dpscope.callbacks import LoopState
    model = _TwoLayers()
    state = LoopState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), run_dir=None)
    tracker = WeightChangeTracker(every_steps=2)
    tracker.on_train_start(state)
    # step 1: example norms sqrt(1+3)=2 and sqrt(4+12)=4; C=3 clips the second only
    # step 2: example norms sqrt(9+16)=5 (clipped) and sqrt(0+1)=1
    reports = [
        _private_report(1, [1.0, 4.0], [3.0, 12.0], max_grad_norm=3.0, noise_std=2.0,
                        clipped_sum_norms={"a.weight": 1.0, "b.weight": 3.0}),
        _private_report(2, [9.0, 0.0], [16.0, 1.0], max_grad_norm=3.0, noise_std=2.0,
                        clipped_sum_norms={"a.weight": 3.0, "b.weight": 1.0},
                        extra={PER_LAYER_BOUNDS_KEY: {"a.weight": 1.5, "b.weight": 2.5}}),
    ]
    for report in reports:
        state.step = report.step
        tracker.on_step_end(state, report)
    s = tracker.series()
    assert len(s) == 1 and s.grad_norm_source == ["per_example_mean"]
    grad = s.matrix("grad_norm")[:, 0]
    assert grad[0] == pytest.approx((1 + 2 + 3 + 0) / 4)
    assert grad[1] == pytest.approx((math.sqrt(3) + math.sqrt(12) + 4 + 1) / 4)
    assert s.global_metrics["clipped_fraction"] == [pytest.approx(2 / 4)]
    # clipped examples: (4, 12) of 16 and (9, 16) of 25
    assert s.matrix("clipped_share")[:, 0] == pytest.approx([(4 / 16 + 9 / 25) / 2, (12 / 16 + 16 / 25) / 2])
    # per-layer bounds only in step 2: a: 3 > 1.5 yes, 0 no; b: 4 > 2.5 yes, 1 no
    assert s.matrix("clipped_fraction_per_layer")[:, 0] == pytest.approx([1 / 2, 1 / 2])
    noise = np.array([2 * math.sqrt(6), 2 * math.sqrt(12)]) * 2
    assert s.matrix("noise_to_signal")[:, 0] == pytest.approx(noise / np.array([4.0, 4.0]))


def _checkpoint_roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _assert_same_series(a: DynamicsSeries, b: DynamicsSeries):
    assert a.points == b.points and a.layers == b.layers
    for metric in a.layer_metrics:
        np.testing.assert_array_equal(a.matrix(metric), b.matrix(metric))
    assert a.global_metrics.keys() == b.global_metrics.keys()


def test_resuming_from_state_dict_mid_interval_continues_the_series_exactly():
    model, opt, state = new_run()
    straight = WeightChangeTracker(every_steps=4)
    straight.on_train_start(state)
    run_epochs(straight, model, opt, state, epochs=4)  # 12 steps -> points at 4, 8, 12

    model, opt, state = new_run()
    first = WeightChangeTracker(every_steps=4)
    first.on_train_start(state)
    run_epochs(first, model, opt, state, epochs=2)  # stops at step 6, inside an interval
    saved = _checkpoint_roundtrip({"model": model.state_dict(), "opt": opt.state_dict(),
                                   "tracker": first.state_dict(), "step": state.step})

    model, opt, state = new_run(seed=1)  # different initial weights, replaced by the checkpoint
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    state.step, state.epoch = saved["step"], 2
    resumed = WeightChangeTracker(every_steps=4)
    resumed.load_state_dict(saved["tracker"])
    resumed.on_train_start(state)
    run_epochs(resumed, model, opt, state, epochs=2)
    _assert_same_series(straight.series(), resumed.series())


def test_resume_with_other_layers_is_refused():
    model, opt, state = new_run()
    tracker = WeightChangeTracker()
    tracker.on_train_start(state)
    other = WeightChangeTracker(include_1d=True)
    other.load_state_dict(tracker.state_dict())
    with pytest.raises(Exception, match="other layers"):
        other.on_train_start(state)


def test_autosave_writes_dynamics_json_that_loads_back(tmp_path):
    model, opt, state = new_run()
    state.run_dir = tmp_path
    tracker = WeightChangeTracker()
    tracker.on_train_start(state)
    run_epochs(tracker, model, opt, state, epochs=2)
    summary = {}
    tracker.on_train_end(state, summary)
    assert summary["dynamics_file"] == "dynamics.json"
    _assert_same_series(load_dynamics(tmp_path), tracker.series())


def test_missing_dynamics_file_names_the_fix(tmp_path):
    with pytest.raises(Exception, match="track_dynamics"):
        load_dynamics(tmp_path)


def test_layer_info_label_and_numel():
    layer = LayerInfo("stages.0.1.conv2.weight", (16, 16, 3, 3))
    assert layer.label == "stages.0.1.conv2" and layer.numel == 2304


def test_empty_poisson_batch_and_zero_noise_are_handled():
    from dpscope.callbacks import LoopState
    model = _TwoLayers()
    state = LoopState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), run_dir=None)
    tracker = WeightChangeTracker(every_steps=2)
    tracker.on_train_start(state)
    empty = StepReport(step=1, epoch=0, batch_size=0, loss=math.nan,
                       per_example_norms=torch.zeros(0),
                       per_param_sq_norms={"a.weight": torch.zeros(0), "b.weight": torch.zeros(0)},
                       max_grad_norm=1.0, noise_std=0.0,
                       clipped_sum_norms={"a.weight": 0.0, "b.weight": 0.0})
    full = _private_report(2, [4.0], [0.0], max_grad_norm=1.0, noise_std=0.0,
                           clipped_sum_norms={"a.weight": 1.0, "b.weight": 0.0})
    for report in (empty, full):
        state.step = report.step
        tracker.on_step_end(state, report)
    s = tracker.series()
    assert s.points[0]["examples"] == 1
    assert s.matrix("grad_norm")[:, 0].tolist() == [2.0, 0.0]
    assert s.global_metrics["clipped_fraction"] == [1.0]
    nts = s.matrix("noise_to_signal")[:, 0]
    assert nts[0] == 0.0 and np.isnan(nts[1])  # 0/0 for a layer with no signal and no noise


def test_resume_with_another_interval_is_refused():
    model, opt, state = new_run()
    tracker = WeightChangeTracker(every_steps=5)
    tracker.on_train_start(state)
    other = WeightChangeTracker()
    other.load_state_dict(tracker.state_dict())
    with pytest.raises(Exception, match="every 5 step"):
        other.on_train_start(state)


def test_with_per_layer_bounds_an_example_is_clipped_if_any_parameter_is():
    from dpscope.callbacks import LoopState
    model = _TwoLayers()
    state = LoopState(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), run_dir=None)
    tracker = WeightChangeTracker(every_steps=1)
    tracker.on_train_start(state)
    # example norms 2, 1, 1: none above max_grad_norm=3, but per-layer bounds clip the first
    # (layer a: 2 > 1) and the third (an untracked bias: 1 > 0.5)
    sq = {"a.weight": torch.tensor([4.0, 0.25, 0.0]), "b.weight": torch.tensor([0.0, 0.75, 0.0]),
          "b.bias": torch.tensor([0.0, 0.0, 1.0])}
    report = StepReport(step=1, epoch=0, batch_size=3, loss=0.0, per_param_sq_norms=sq,
                        max_grad_norm=3.0,
                        extra={PER_LAYER_BOUNDS_KEY: {"a.weight": 1.0, "b.weight": 1.0, "b.bias": 0.5}})
    state.step = 1
    tracker.on_step_end(state, report)
    s = tracker.series()
    assert s.global_metrics["clipped_fraction"] == [pytest.approx(2 / 3)]
    assert s.matrix("clipped_fraction_per_layer")[:, 0] == pytest.approx([1 / 3, 0.0])
    # shares: example 0 is all layer a; example 2 is all the bias
    assert s.matrix("clipped_share")[:, 0] == pytest.approx([0.5, 0.0])
