"""The clipping benchmark runs end to end on a tiny case and records what it measured (no timing asserts)."""

from __future__ import annotations

import json

from dpscope.bench.clipping import run_clipping_benchmark


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
