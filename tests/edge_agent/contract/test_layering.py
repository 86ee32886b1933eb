"""The contract sub-package imports nothing else of edge_agent (ARCHITECTURE: the modules every
stage shares sit below the runtime, so training and build_engine can use them alone)."""

import ast
from pathlib import Path

import edge_agent.contract

CONTRACT_DIR = Path(edge_agent.contract.__file__).parent


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.append(node.module)
    return names


def test_contract_imports_only_itself_from_edge_agent() -> None:
    offenders = [
        f"{path.name}: {name}"
        for path in sorted(CONTRACT_DIR.glob("*.py"))
        for name in _imported_modules(path)
        if (name == "edge_agent" or name.startswith("edge_agent."))
        and not name.startswith("edge_agent.contract")
    ]
    assert offenders == []


def test_the_layering_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from edge_agent.config import AgentConfig\nimport edge_agent.pipeline\n")
    assert _imported_modules(bad) == ["edge_agent.config", "edge_agent.pipeline"]
