"""The README's main command, end to end: scripts/demo.py on the shipped model and frames."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mqtt_broker import require_mosquitto

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.mqtt
def test_demo_classifies_every_shipped_frame_over_mqtt(tmp_path: Path) -> None:
    require_mosquitto()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "20/20 frames classified over MQTT" in run.stdout
    # The shipped model agrees with the volunteers on most of its own test frames (11/20 for
    # the current demo model, 15/20 for the first; ONNX Runtime is deterministic on the CPU);
    # far above the 2/20 of chance.
    agree = int(run.stdout.split("classified over MQTT, ")[1].split()[0])
    assert agree >= 10
    assert (tmp_path / "bundle" / "manifest.json").is_file()
