"""The device scripts run where nothing can be fixed by hand (a lent GPU, minutes of it): they lint
clean here, and a wrong step is refused at once, before anything is installed or started."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from deploy_fixtures import tool

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.sh")))
def test_device_scripts_lint_clean(script: str) -> None:
    result = subprocess.run([tool("shellcheck"), str(BENCH / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_an_unknown_step_is_refused_before_anything_runs() -> None:
    result = subprocess.run(["bash", str(BENCH / "bench_gpu.sh"), "tabels"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "usage: bench/bench_gpu.sh" in result.stderr
    assert "nvidia-smi" not in result.stderr and "torch sees no GPU" not in result.stderr
