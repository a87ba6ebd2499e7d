"""Each example in examples/ runs offline on the tiny model it builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = ["reinit_top_layers.py", "reinit_layer0_query.py", "drop_mlm_head.py"]


@pytest.mark.roundtrip
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
