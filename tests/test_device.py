"""Where runs compute: device names are checked before a run starts, a run says where it ran,
and (on a machine with a CUDA GPU) private training on the GPU keeps every guarantee."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpscope.class_clip import ClassClip
from dpscope.config import make_run_config
from dpscope.device import check_device_spec, describe_device, exact_float32, resolve_device
from dpscope.errors import ConfigError
from dpscope.train import SilentReporter, train
from loop_helpers import assert_train_refuses, whole_and_resumed

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
PRIVATE = dict(dataset="digits", model="cnn", epochs=2, batch_size=128, lr=0.5, momentum=0.0,
               threads=1, epsilon=3.0, max_grad_norm=1.0)


def test_auto_is_the_gpu_when_there_is_one_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "meta", "mps", ""])
def test_a_name_torch_cannot_use_is_refused_in_the_config(spec):
    with pytest.raises(ConfigError, match="device"):
        make_run_config(device=spec)
    with pytest.raises(ConfigError, match="cpu, cuda"):
        check_device_spec(spec)


def test_a_missing_gpu_is_an_error_never_a_silent_cpu_run(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="sees no CUDA GPU.*--device cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(CUDA, reason="this machine has a GPU, so --device cuda is not refused")
def test_train_refuses_a_gpu_this_machine_lacks(tmp_path):
    assert_train_refuses(tmp_path, ["--device", "cuda"], "sees no CUDA GPU")


@pytest.mark.skipif(CUDA, reason="this machine has a GPU, so --device cuda is not refused")
@pytest.mark.parametrize("script", ["clipping.py", "accuracy.py"])
def test_benchmark_scripts_refuse_a_missing_gpu_with_one_line(script, tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks" / script), "--device", "cuda",
                             *(["--out", str(tmp_path / "out")] if script == "accuracy.py" else [])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("error:") and "sees no CUDA GPU" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_train_refuses_an_unknown_device_name(tmp_path):
    assert_train_refuses(tmp_path, ["--device", "tpu"], "device")


def test_a_cpu_run_records_its_device(tmp_path):
    summary = train(make_run_config(dataset="digits", model="mlp", epochs=1, threads=1, device="cpu"),
                    run_dir=tmp_path / "run")
    assert summary["device"].startswith("cpu (")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["device"] == "cpu"


def test_class_bounds_follow_the_targets_device():
    clip = ClassClip((1.0, 0.35), ("normal", "pneumonia"))
    targets = torch.tensor([1, 0, 1])
    assert clip.of(targets).device == targets.device
    assert clip.of(targets).tolist() == pytest.approx([0.35, 1.0, 0.35])


@needs_cuda
def test_private_training_on_the_gpu_accounts_as_on_the_cpu(tmp_path):
    """Every extra at once (class bounds, EMA, dynamics, augmentation copies) runs on the GPU,
    with the same plan, sampler and ledger as on the CPU."""
    options = dict(PRIVATE, class_clip=tuple([1.0] + [0.5] * 9), ema_decay=0.9,
                   track_dynamics=True, augment="crop", augment_multiplicity=2)
    gpu = train(make_run_config(**options, device="cuda"), run_dir=tmp_path / "gpu")
    cpu = train(make_run_config(**options, device="cpu"), run_dir=tmp_path / "cpu")
    assert gpu["device"].startswith("cuda:0 (") and cpu["device"].startswith("cpu (")
    for key in ("epsilon", "noise_multiplier", "sample_rate", "privacy_steps", "steps"):
        assert gpu[key] == cpu[key], key
    assert (tmp_path / "gpu" / "dynamics.json").is_file()


@needs_cuda
def test_private_training_learns_on_the_gpu(tmp_path):
    """digits' private recipe (5 epochs, eps 3) reaches 0.72 on the CPU; the GPU draws other
    noise and batches, so it is held to a margin below that."""
    summary = train(make_run_config(**dict(PRIVATE, epochs=5), device="cuda"), run_dir=tmp_path / "gpu")
    assert summary["test_accuracy"] > 0.55


@needs_cuda
@pytest.mark.parametrize("clipping", ["auto", "ghost", "bookkeeping", "materialize", "vmap"])
def test_gpu_runs_resume_to_the_same_budget(tmp_path, clipping):
    whole, resumed = whole_and_resumed(dict(PRIVATE, model="mlp", epochs=3, clipping=clipping,
                                            device="cuda"), tmp_path)
    assert resumed["epsilon"] == whole["epsilon"] and resumed["steps"] == whole["steps"]
    assert resumed["test_accuracy"] == pytest.approx(whole["test_accuracy"], abs=0.02)


@needs_cuda
def test_describe_names_the_gpu():
    assert torch.cuda.get_device_name(0) in describe_device(torch.device("cuda"))


@pytest.mark.skipif(CUDA, reason="simulates a machine without the run's GPU")
def test_a_gpu_noise_stream_survives_a_resume_on_the_cpu():
    from dpscope.optim.noise import GaussianNoise

    noise = GaussianNoise(seed=3)
    noise.like(torch.zeros(4), 1.0)
    state = noise.state_dict()
    gpu_stream = torch.arange(16, dtype=torch.uint8)  # stands for a CUDA generator's state
    state["generators"]["cuda:0"] = gpu_stream
    moved = GaussianNoise()
    moved.load_state_dict(state)
    assert torch.equal(moved.like(torch.zeros(4), 1.0), noise.like(torch.zeros(4), 1.0))
    assert torch.equal(moved.state_dict()["generators"]["cuda:0"], gpu_stream)  # kept for later


@pytest.mark.skipif(CUDA, reason="simulates a machine without the run's GPU")
def test_a_run_from_a_gpu_resumes_on_the_cpu_with_the_same_budget(tmp_path):
    """A run configured for cuda and cut in epoch 1 (its noise stream on cuda:0) is refused
    where there is no GPU, then continues with --device cpu to the uninterrupted epsilon."""
    from typer.testing import CliRunner

    from dpscope.cli import app
    from loop_helpers import CrashAtEpoch

    options = dict(PRIVATE, model="mlp", epochs=2, device="cpu")
    whole = train(make_run_config(**options), run_dir=tmp_path / "whole")
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(make_run_config(**options), run_dir=cut, callbacks=[CrashAtEpoch(1)])
    config = json.loads((cut / "config.json").read_text())
    config["config"]["device"] = "cuda"
    (cut / "config.json").write_text(json.dumps(config))
    checkpoint = torch.load(cut / "checkpoint.pt", weights_only=False)
    streams = checkpoint["optimizer"]["noise"]["generators"]
    streams["cuda:0"] = streams.pop("cpu")
    torch.save(checkpoint, cut / "checkpoint.pt")

    refused = CliRunner().invoke(app, ["train", "--resume", "--out", str(cut), "-q"])
    assert refused.exit_code == 2 and "--device cpu" in refused.output
    assert "Traceback" not in refused.output
    moved = CliRunner().invoke(app, ["train", "--resume", "--out", str(cut), "--device", "cpu", "-q"])
    assert moved.exit_code == 0, moved.output
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["device"].startswith("cpu (")
    assert summary["epsilon"] == whole["epsilon"] and summary["steps"] == whole["steps"]


def test_exact_float32_turns_tf32_off_for_cuda_and_restores_it():
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    with pytest.raises(KeyboardInterrupt):
        with exact_float32(torch.device("cuda")):
            assert conv.fp32_precision == torch.backends.cuda.matmul.fp32_precision == "ieee"
            raise KeyboardInterrupt
    assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before
    with exact_float32(torch.device("cpu")):  # nothing to change on the CPU
        assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before


@needs_cuda
@pytest.mark.parametrize("strategy", ["auto", "bookkeeping", "ghost", "materialize", "crb"])
def test_a_clipped_example_stays_within_its_bound_on_the_gpu_even_with_tf32(strategy):
    """With TF32 allowed everywhere (cuDNN's default), each example's clipped contribution still
    has norm C to float32 rounding: norms and sums are computed in full float32."""
    from torch import nn

    from dpscope import clipping

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1),
                          nn.Flatten(), nn.Linear(32 * 16 * 16, 10)).cuda()
    engine = clipping.ClippingEngine(model, strategy)
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = conv.fp32_precision, matmul.fp32_precision
    conv.fp32_precision = matmul.fp32_precision = "tf32"
    try:
        for i in range(8):  # one example at a time: its sum is its clipped gradient
            x, y = torch.randn(1, 3, 16, 16, device="cuda") * 10, torch.tensor([i % 10], device="cuda")
            engine.clipped_grad_sum(lambda o, t: nn.functional.cross_entropy(o, t, reduction="none"),
                                    x, y, 1e-3)
            norm = torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters()))
            assert float(norm) <= 1e-3 * (1 + 1e-5)
    finally:
        conv.fp32_precision, matmul.fp32_precision = before


def test_the_cpu_is_described_by_its_model(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    first = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
    cpuinfo.write_text(first + "\nprocessor\t: 1\ncpu family\t: 99\nmodel\t\t: 99\n")  # the first CPU's block counts
    monkeypatch.setattr("dpscope.device.CPUINFO", str(cpuinfo))
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: "AVX512")
    assert describe_device(torch.device("cpu")) == (
        "cpu (AMD EPYC 9654 96-Core Processor, family 25 model 17, AVX512, x86_64)")
    cpuinfo.write_text("processor\t: 0\n")  # no model lines (some ARM kernels): platform's word only
    monkeypatch.setattr("platform.processor", lambda: "")
    assert describe_device(torch.device("cpu")) == "cpu (AVX512, x86_64)"


class PlanReporter(SilentReporter):
    """Keeps the plan a run prints when it starts."""

    def start(self, config, run_dir, description): self.plan = description


def test_a_run_resumed_on_another_cpu_says_so_and_lists_both(monkeypatch, tmp_path):
    from dpscope.train import resume
    from loop_helpers import CrashAtEpoch

    here = describe_device(torch.device("cpu"))
    whole, resumed_here = whole_and_resumed(PRIVATE, tmp_path)
    assert whole["devices"] == resumed_here["devices"] == [here]  # same CPU: one entry
    with pytest.raises(KeyboardInterrupt):
        train(make_run_config(**PRIVATE), run_dir=tmp_path / "moved", callbacks=[CrashAtEpoch(1)])
    monkeypatch.setattr("dpscope.train.describe_device", lambda device: "cpu (Other CPU, x86_64)")
    reporter = PlanReporter()
    summary = resume(tmp_path / "moved", reporter=reporter)
    assert summary["devices"] == [here, "cpu (Other CPU, x86_64)"]
    assert summary["device"] == "cpu (Other CPU, x86_64)"
    assert f"resumed; earlier epochs ran on {here}" in reporter.plan
    assert "not repeat an uninterrupted one bit for bit" in reporter.plan
    assert summary["epsilon"] == whole["epsilon"]
