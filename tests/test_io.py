import json

import pytest

from dpscope.io import append_jsonl_atomic, read_jsonl, write_json_atomic


def test_write_json_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "a" / "summary.json"
    write_json_atomic(target, {"x": 1})
    write_json_atomic(target, {"y": 2})
    assert json.loads(target.read_text()) == {"y": 2}
    assert [p.name for p in target.parent.iterdir()] == ["summary.json"]


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "summary.json"
    write_json_atomic(target, {"x": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_append_jsonl_keeps_order(tmp_path):
    target = tmp_path / "metrics.jsonl"
    for i in range(3):
        append_jsonl_atomic(target, {"epoch": i})
    assert [r["epoch"] for r in read_jsonl(target)] == [0, 1, 2]


def test_atomic_files_get_ordinary_permissions(tmp_path):
    import os

    target = tmp_path / "report.html"
    write_json_atomic(target, {})
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
