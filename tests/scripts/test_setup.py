"""What scripts/setup installs is enough for scripts/test and the docs, without system Node.js.

pyright comes from PyPI (basedpyright, which carries its own Node.js), so the type check of the
TensorRT modules runs on a machine where ``node`` is not on the PATH; ``mosquitto_sub``, which
docs/mqtt.md tells users to run, is installed beside the broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqtt_broker import MosquittoBroker
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
NODE_NAMES = {"node", "nodejs", "npm", "npx", "corepack"}


def path_without_node(tmp_path: Path) -> str:
    """A PATH of the venv's bin and links to every system tool except Node.js and npm."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        if not Path(folder).is_dir():
            continue
        for entry in Path(folder).iterdir():
            if entry.name in NODE_NAMES or (tools / entry.name).exists():
                continue
            (tools / entry.name).symlink_to(entry)
    venv_bin = Path(sys.executable).parent
    return f"{venv_bin}{os.pathsep}{tools}"


@pytest.mark.slow
def test_typecheck_tensorrt_runs_without_node_on_the_path(tmp_path: Path) -> None:
    path = path_without_node(tmp_path)
    assert shutil.which("node", path=path) is None
    assert shutil.which("npm", path=path) is None
    env = {**os.environ, "PATH": path, "GALAXY_EDGE_VENV": str(Path(sys.executable).parents[1])}
    done = subprocess.run(
        [str(ROOT / "scripts" / "typecheck-tensorrt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 errors" in done.stdout


@pytest.mark.slow
def test_the_pyright_of_setup_catches_a_misspelled_tensorrt_member(tmp_path: Path) -> None:
    """The check has teeth: the stubs are read and an unknown BuilderFlag is an error."""
    subprocess.run(
        [str(ROOT / "scripts" / "typecheck-tensorrt")], cwd=ROOT, capture_output=True, timeout=300
    )  # installs tensorrt-stubs when missing
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorrt as trt\n\nflag = trt.BuilderFlag.FP61\n", encoding="utf-8")
    pyright = Path(sys.executable).parent / "basedpyright"
    done = subprocess.run(
        [str(pyright), "--pythonpath", sys.executable, str(bad)],
        cwd=ROOT,
        env={**os.environ, "PATH": path_without_node(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FP61" in done.stdout


@pytest.mark.mqtt
def test_mosquitto_sub_from_setup_receives_what_is_published(mosquitto: MosquittoBroker) -> None:
    """docs/mqtt.md's ``mosquitto_sub`` is installed and talks to the broker."""
    sub = shutil.which("mosquitto_sub")
    assert sub is not None, "mosquitto_sub missing: scripts/setup installs mosquitto-clients"
    proc = subprocess.Popen(
        [sub, "-h", "127.0.0.1", "-p", str(mosquitto.port), "-t", "setup/test", "-C", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        out = ""
        for _ in range(50):  # the subscription needs a moment; republish until it arrives
            client.publish("setup/test", "hello", qos=1).wait_for_publish(2)
            try:
                out, _ = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        client.loop_stop()
        client.disconnect()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip() == "hello"
