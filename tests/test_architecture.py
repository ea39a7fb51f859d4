"""The layout the architecture promises (``docs/architecture.md``), checked by reading the source:

* the import graph of ``rlaccel/``, ``agents/`` and ``envs/`` (``ast``, imports inside
  functions included) has no cycle;
* the core (``rlaccel/``) imports no algorithm: the registry finds them through entry points;
* ``import rlaccel`` and loading a config stay JAX-free;
* every module is readable in one sitting (no module over ~400 lines).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"rlaccel": REPO / "rlaccel", "rlaccel.agents": REPO / "agents", "rlaccel.envs": REPO / "envs"}
MAX_LINES = 420


def modules() -> dict[str, Path]:
    """Module name -> file, for every ``.py`` file of the three source folders."""
    out = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The rlaccel modules ``path`` imports anywhere in its body (lazy imports too).

    Parent packages, which Python initialises before any of their modules, are not counted
    as imported by their children: ``from rlaccel import config`` imports ``rlaccel.config``.
    """
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name.split(".") if is_package else name.split(".")[:-1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for a in node.names:  # `from pkg import module` imports the module; `from m import name`, m
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph as a list of nodes, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle():
    mods = modules()
    graph = {name: imports(name, path, set(mods)) for name, path in mods.items()}
    assert sum(len(v) for v in graph.values()) > 100  # the reader sees the imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_core_imports_no_algorithm():
    mods = modules()
    core = {n: p for n, p in mods.items() if not n.startswith(("rlaccel.agents", "rlaccel.envs"))}
    offenders = {n: sorted(m for m in imports(n, p, set(mods)) if m.startswith("rlaccel.agents")) for n, p in core.items()}
    assert not {n: m for n, m in offenders.items() if m}
    # ...nor names one: no `algo == "ppo"` style branches.
    for name, path in core.items():
        text = path.read_text()
        for algo in ("ppo", "dqn"):
            assert f'== "{algo}"' not in text and f"== '{algo}'" not in text, (name, algo)


def test_import_rlaccel_and_loading_configs_stay_jax_free():
    code = (
        "import sys, rlaccel, rlaccel.config, rlaccel.registry, rlaccel.cli\n"
        "from rlaccel.sweep import grid\n"
        "for f in ('configs/ppo_cartpole.yaml', 'configs/dqn_cartpole.yaml', 'configs/ppo_gym_cartpole.yaml'):\n"
        "    rlaccel.config.load(f)\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'optax', 'brax', 'mujoco') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_modules_are_readable_in_one_sitting():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
