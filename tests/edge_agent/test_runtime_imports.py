"""The runtime never pulls in training or hardware stacks (ARCHITECTURE: edge_agent is torch-free;
tensorrt and pycuda only inside the TensorRT backend)."""

import subprocess
import sys

RUNTIME_MODULES = [
    "edge_agent.cli",
    "edge_agent.agent",
    "edge_agent.pipeline",
    "edge_agent.backends.factory",
    "edge_agent.backends.onnxruntime_backend",
    "edge_agent.sources.factory",
    "edge_agent.contract.decode",
    "edge_agent.mqtt_client",
    "edge_agent.contract.labelled_data",
]
FORBIDDEN = ["torch", "timm", "tensorrt", "pycuda", "h5py", "training", "build_engine"]


def test_runtime_imports_no_training_or_hardware_stack() -> None:
    code = (
        "import sys\n"
        f"for m in {RUNTIME_MODULES!r}: __import__(m)\n"
        f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"runtime imported: {out.stdout.strip()}"
