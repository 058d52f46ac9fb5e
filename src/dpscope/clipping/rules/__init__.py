"""Per-example gradient rules, one file per layer family; the registry lives in `registry.py`."""
