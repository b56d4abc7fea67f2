"""The torture suite's report: the seed in the header, every recorded figure after the run (and in the JSON
file named by CHATCLI_TORTURE_REPORT, when set)."""

from __future__ import annotations

import json
import os
from typing import Any

import torturelib


def pytest_report_header(config: Any) -> str:
    return (
        f"torture: seed {torturelib.SEED} (rerun with CHATCLI_TORTURE_SEED={torturelib.SEED}), "
        f"kills {torturelib.KILLS}, fuzz {torturelib.FUZZ}, writers {torturelib.WRITERS}"
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    figures = {case: dict(values) for case, values in sorted(torturelib.FIGURES.items())}
    if not figures:
        return
    tr = terminalreporter
    tr.section("torture figures")
    tr.write_line(f"seed {torturelib.SEED}")
    for case, values in figures.items():
        tr.write_line(f"{case}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    report = os.environ.get("CHATCLI_TORTURE_REPORT", "").strip()
    if report:
        with open(report, "w", encoding="utf-8") as f:
            json.dump({"seed": torturelib.SEED, "figures": figures}, f, indent=2, ensure_ascii=False)
