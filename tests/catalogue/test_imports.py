"""The catalogue imports the agent's contract and payload schemas, never its runtime."""

from __future__ import annotations

import json
import subprocess
import sys


def test_only_the_contract_and_the_schemas_of_the_agent_are_imported() -> None:
    code = (
        "import sys, json\n"
        "import catalogue.cli, catalogue.writer, catalogue.web.server, catalogue.export\n"
        "import catalogue.store.sqlite, catalogue.store.postgres, catalogue.messages\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "    ('edge_agent', 'onnxruntime', 'cv2', 'torch', 'training', 'build_engine'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    allowed = ("edge_agent", "edge_agent.contract", "edge_agent.schemas")
    outside = [m for m in loaded if not any(m == a or m.startswith(a + ".") for a in allowed[1:])]
    assert outside in ([], ["edge_agent"]), outside
