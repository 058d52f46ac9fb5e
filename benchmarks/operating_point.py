"""Test accuracy of finished two-class runs at a threshold chosen on validation, and at the test
oracle: is a private model's accuracy lost to its ranking (AUC) or to its operating point?

    python benchmarks/operating_point.py RUN_DIR... [--json out.json]

Reads run folders (config.json, checkpoint.pt); trains nothing. Logic: dpscope.bench.operating_point.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpscope.bench.operating_point import format_table, run_operating_points
from dpscope.errors import run_script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="finished dpscope run folders")
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args()
    record = run_operating_points(args.run_dirs, json_path=args.json)
    print(format_table(record["rows"]))


if __name__ == "__main__":
    run_script(main)
