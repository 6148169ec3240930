"""The package's layout: each stage imports only the stages below it, and no module imports
itself back through others. docs/ARCHITECTURE.md describes the layers."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# lowest first; a module may import from its own layer or any layer below it
LAYERS = [
    (
        "foundations",
        (
            "worldsim",
            "worldsim.config",
            "worldsim.runtime",
            "worldsim.files",
            "worldsim.games",
            "worldsim.policies",
            "worldsim_envs",
            "worldsim_configs",
        ),
    ),
    ("data", ("worldsim.data",)),
    ("models", ("worldsim.models",)),
    ("sim", ("worldsim.sim",)),
    ("training", ("worldsim.training",)),
    ("evaluation", ("worldsim.evaluation",)),
    ("apps", ("worldsim.play", "worldsim.rl", "worldsim.online", "worldsim.pipeline")),
    ("entry", ("worldsim.cli", "worldsim.__main__")),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in (("worldsim", ROOT / "worldsim"), ("worldsim_envs", ROOT / "envs")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _layer(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > depth:
                best, depth = i, len(p)
    assert best is not None, f"{module} belongs to no layer of tests/test_layout.py"
    return best


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Every worldsim module `module` imports, at the top or inside a function."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


GRAPH = {m: _imports(m, p, set(_modules())) for m, p in _modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_layer_above_its_own(module):
    up = sorted(m for m in GRAPH[module] if _layer(m) > _layer(module))
    assert not up, f"{module} ({LAYERS[_layer(module)][0]}) imports {up} from above it"


def test_no_import_circle():
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if n == "worldsim" or m == "worldsim":
                continue  # the package's face imports the games it registers
            if state.get(n) == 1:
                raise AssertionError(" -> ".join([*path[path.index(n) :], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])


def test_a_human_render_env_pulls_in_no_window_until_it_draws():
    import os
    import subprocess
    import sys

    seen = (
        "sorted(m for m in ('pygame', 'worldsim.play', 'worldsim.sim.window') if m in sys.modules)"
    )
    code = (
        "import sys, worldsim, gymnasium as gym; "
        f"env = gym.make('worldsim/World-v0', render_mode='human'); print({seen}); "
        f"env.reset(seed=0); print({seen})"
    )
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-1000:]
    assert r.stdout.split("\n")[:2] == ["[]", "['pygame', 'worldsim.sim.window']"], r.stdout
