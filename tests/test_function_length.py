"""No function in mnnq/ is longer than MAX_LINES (issue 15: a pipeline a newcomer reads in one
sitting); a long function is split into named stages, not exempted."""
import ast
from pathlib import Path

MAX_LINES = 60
ROOT = Path(__file__).resolve().parents[1] / "mnnq"


def test_functions_are_short():
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these into named stages: " + "; ".join(long)
