"""docs/architecture.md stays true, and the layering it states holds (import-linter, contracts in pyproject.toml)."""
import ast
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "architecture.md"
CODE_DIRS = ("app", "models", "preprocessing", "training", "bench", "tests")
CAMEL = re.compile(r"\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]*)+\b")  # SQLiteJobStore, EtaBoard, ModelRegistry...
NOT_CODE = {"PyTorch", "FastAPI", "OpenAPI", "JavaScript", "LitServe", "ImageNet", "GitHub", "PostgreSQL", "WebP",
            "ResNet", "BatchNorm", "ReLU", "TorchScript", "SQLite", "LitAPI", "OnnxRuntime"}


def python_files() -> list[Path]:
    return [path for folder in CODE_DIRS for path in (REPO_ROOT / folder).rglob("*.py")]


def defined_names() -> set[str]:
    names: set[str] = set()
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(target.id for target in node.targets if isinstance(target, ast.Name))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def test_every_module_the_architecture_doc_names_exists():
    text = DOC.read_text()
    basenames = {path.name for path in python_files()}
    missing = sorted({name for name in re.findall(r"\b([a-z_][a-z0-9_]*\.py)\b", text)} - basenames)
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_class_or_function_the_architecture_doc_names_exists():
    text = DOC.read_text()
    mentioned = set(CAMEL.findall(text)) - NOT_CODE
    missing = sorted(mentioned - defined_names())
    assert not missing, f"docs/architecture.md names things the code does not define: {missing}"


def test_every_command_the_architecture_doc_names_runs_a_module_that_exists():
    modules = set(re.findall(r"python -m ([a-z_][a-z0-9_.]*[a-z0-9_])", DOC.read_text()))
    missing = sorted(name for name in modules if importlib.util.find_spec(name) is None)
    assert not missing, f"docs/architecture.md runs modules that do not exist: {missing}"


def test_the_layering_holds():
    """The contracts in pyproject.toml ([tool.importlinter]): lower floors never import upper ones."""
    binary = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert binary, "lint-imports is missing: `make install` installs import-linter (dev extra)"
    done = subprocess.run([binary, "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
