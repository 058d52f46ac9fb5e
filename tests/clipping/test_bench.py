"""The clipping benchmark runs end to end on a tiny case and records what it measured (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch

from dpscope.bench.clipping import run_clipping_benchmark
from dpscope.models import build_model


def test_benchmark_records_every_variant_and_writes_json(tmp_path):
    lines: list[str] = []
    path = tmp_path / "bench.json"
    record = run_clipping_benchmark(
        [("mlp", 4)], ("nonprivate", "auto", "naive"), repeats=2, warmup=1, memory=False, json_path=str(path), echo=lines.append
    )
    (case,) = json.loads(path.read_text())["cases"]
    assert [v["variant"] for v in case["variants"]] == ["nonprivate", "auto", "naive"]
    assert all(len(v["times_ms"]) == 2 and v["median_ms"] > 0 and v["error"] is None for v in case["variants"])
    assert record["threads"] == 2 and "auto" in lines[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_memory_counts_the_gradients_of_a_fresh_model():
    """Every variant's peak holds at least the model's gradients (fp32), which a model that
    already stepped would hide."""
    from dpscope.bench.clipping import _cuda_peak_mb

    torch.set_default_dtype(torch.float32)  # the benchmark's models are fp32
    torch.set_default_device("cpu")
    grads_mb = sum(p.numel() for p in build_model("cnn", in_channels=1, image_size=28,
                                                  num_classes=10).parameters()) * 4 / 2**20
    for variant in ("nonprivate", "auto"):
        assert _cuda_peak_mb(variant, "cnn", 32, torch.device("cuda")) >= grads_mb
