"""The package's shape: one import package ``us3l`` whose rooms import only downward, a wheel that
holds ``us3l/`` alone, a lazy top level, and remote-agent code that runs on JetPack's Python."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "us3l"

#: What each room may import (besides itself, the standard library and third-party packages).
ALLOWED = {
    "core": {"core"},
    "trainer": {"core", "trainer"},
    "exporters": {"core", "exporters"},
    "benchmarks": {"core", "exporters", "benchmarks"},
    "fleet": {"core", "exporters", "benchmarks", "fleet"},
    "api": {"core", "trainer", "exporters", "benchmarks", "fleet", "api"},
    "cli": {"core", "trainer", "exporters", "benchmarks", "fleet", "api", "cli"},
}


def _room(module: str) -> str | None:
    """``us3l.trainer.loop`` -> ``train``; ``us3l`` itself -> ``""``; not ours -> None."""
    parts = module.split(".")
    if parts[0] != "us3l":
        return None
    return parts[1] if len(parts) > 1 else ""


def _imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """Every module a file imports (top-level, in functions, under TYPE_CHECKING, and
    ``importlib.import_module("us3l.x")`` with a literal), relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None or mod in ("us3l",):  # ``from .. import x``: x may be a room
                found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, mod))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and node.args[0].value.startswith("us3l")):
            found.append((node.lineno, node.args[0].value))
    return found


def import_violations(package_dir: Path) -> list[str]:
    """``file:line: room -> room`` for every import that runs upward or sideways."""
    bad = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent)
        parts = rel.with_suffix("").parts
        module_pkg = ".".join(parts if parts[-1] == "__init__" else parts[:-1])
        module_pkg = module_pkg.removesuffix(".__init__")
        room = parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] != "__init__") else ""
        if room == "" or room not in ALLOWED:  # the top-level us3l/__init__.py may re-export anything
            continue
        for line, mod in _imported_modules(path, module_pkg):
            target = _room(mod)
            if target is None or target == "":
                if target == "":
                    bad.append(f"{rel}:{line}: {room} -> us3l (the top level)")
                continue
            if target not in ALLOWED[room]:
                bad.append(f"{rel}:{line}: {room} -> {target} ({mod})")
    return bad


def test_rooms_import_only_downward():
    assert import_violations(PACKAGE) == []


@pytest.mark.parametrize("room, planted", [
    ("core/width.py", "from us3l.trainer import loop\n"),                       # core reaching up
    ("trainer/ema.py", "def f():\n    from us3l.exporters import pipeline\n"),  # sideways, inside a function
    ("exporters/parity.py", "from ..benchmarks import stats\n"),               # exporters -> benchmarks, relative
    ("benchmarks/stats.py", "import us3l.api\n"),                              # a room reaching the top floor
    ("core/bn.py", "from .. import trainer\n"),                                # a room through the top package
])
def test_a_planted_upward_import_is_caught(tmp_path, room, planted):
    copy = tmp_path / "us3l"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / room
    target.write_text(target.read_text() + "\n" + planted)
    found = import_violations(copy)
    assert len(found) == 1 and found[0].startswith(f"us3l/{room}:"), found


def _module_names(package_dir: Path) -> dict[str, Path]:
    """``{"us3l.core.width": path, "us3l.core": .../core/__init__.py, ...}``."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


class Edge(NamedTuple):
    line: int
    lazy: bool  # every such import is inside a function (runs on first call, not on import)


def _imports_with_laziness(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    out: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                out.append((child, in_function))
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(tree, False)
    return out


def module_graph(package_dir: Path) -> dict[str, dict[str, Edge]]:
    """``{module: {imported module: Edge}}`` over every import of ours (top level, in functions, under
    TYPE_CHECKING), as Python runs it: importing ``a.b.c`` runs the ``__init__`` of ``a.b`` too
    (unless it encloses the importer, which is already running), and ``from pkg import sub`` reaches
    the submodule ``pkg.sub`` when there is one."""
    modules = _module_names(package_dir)

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, Edge]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        enclosing = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)} | {name}
        edges: dict[str, Edge] = {}
        for node, lazy in _imports_with_laziness(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{mod}.{alias.name}" for alias in node.names if f"{mod}.{alias.name}" in modules]
                targets = subs + ([mod] if len(subs) < len(node.names) else [])
            for target in targets:
                found = ours(target)
                while found and found not in enclosing:
                    old = edges.get(found)
                    edges[found] = Edge(old.line if old else node.lineno, lazy and (old.lazy if old else True))
                    found = found.rpartition(".")[0] if "." in found else ""
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _registry_with_implementations(component: list[str], graph: dict[str, dict[str, Edge]]) -> bool:
    """One ``registry`` module whose lazy imports (inside its loader function) of the implementations
    that register with it are the only way round: without them the modules form no circle."""
    registries = [m for m in component if m.rpartition(".")[2] == "registry"]
    if len(registries) != 1:
        return False
    inner = {m: {t: e for t, e in graph[m].items() if t in component and not (m == registries[0] and e.lazy)}
             for m in component}
    return not _cycles(inner)


def import_circles(package_dir: Path) -> list[str]:
    """Every import circle except a registry with its implementations, with the edges that make it."""
    graph = module_graph(package_dir)
    out = []
    for component in _cycles(graph):
        if _registry_with_implementations(component, graph):
            continue
        edges = [f"{m} -> {t} (line {e.line})" for m in component for t, e in sorted(graph[m].items()) if t in component]
        out.append(f"circle of {len(component)}: " + "; ".join(edges))
    return out


def test_no_import_circle_but_registries():
    assert import_circles(PACKAGE) == []
    registries = [c for c in _cycles(module_graph(PACKAGE))]  # the allowed ones are really there (not vacuous)
    assert {"us3l.core.models.registry", "us3l.exporters.registry", "us3l.benchmarks.runners.registry"} <= \
        {m for c in registries for m in c}


@pytest.mark.parametrize("room, planted, circle", [
    ("core/width.py", "def f():\n    from us3l.core import slicing\n", "us3l.core.slicing"),    # lazy, in a function
    ("exporters/parity.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .pipeline import ExportConfig\n",
     "us3l.exporters.pipeline"),                                                                  # for the type checker only
    ("benchmarks/runners/base.py", "from . import registry\n", "us3l.benchmarks.runners.base"),  # a registry, but its base
])
def test_a_planted_circle_is_caught(tmp_path, room, planted, circle):
    copy = tmp_path / "us3l"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    target = copy / room
    target.write_text(target.read_text() + "\n" + planted)
    found = import_circles(copy)
    assert len(found) == 1 and circle in found[0], found
    assert import_violations(copy) == []  # downward-only still holds: the circle is inside one room


def test_import_us3l_is_lazy_and_the_api_verbs_are_plain_functions():
    code = ("import inspect, pickle, sys, types, us3l\n"
            "assert 'torch' not in sys.modules, 'import us3l pulled in torch'\n"
            "us3l.load; us3l.evaluate; us3l.SlimmableModel\n"
            "for name in ('train', 'export', 'bench'):\n"
            "    fn = getattr(us3l, name)\n"
            "    assert isinstance(fn, types.FunctionType), (name, type(fn))\n"
            "    assert fn.__module__ == 'us3l.api.commands' and fn.__doc__\n"
            "    assert 'args' not in inspect.signature(fn).parameters\n"
            "    assert pickle.loads(pickle.dumps(fn)) is fn\n"
            "assert 'source' in inspect.signature(us3l.export).parameters\n"
            "assert type(sys.modules['us3l']) is types.ModuleType\n"  # no module-class swap
            "import us3l.exporters.pipeline as p\n"
            "assert p.__name__ == 'us3l.exporters.pipeline' and isinstance(us3l.export, types.FunctionType)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT / "tests")


def test_api_verbs_forward_to_the_api(monkeypatch):
    import us3l
    import us3l.api.commands as commands

    seen = {}
    monkeypatch.setattr(commands, "widths", lambda *a, **k: seen.setdefault("widths", (a, k)))
    monkeypatch.setattr(commands, "export", lambda *a, **k: seen.setdefault("export", (a, k)))
    us3l.widths("us_resnet_mini", "0.5")
    us3l.export("ckpt.pt", "0.5", format="onnx")
    assert seen == {"widths": (("us_resnet_mini", "0.5"), {}), "export": (("ckpt.pt", "0.5"), {"format": "onnx"})}


@pytest.mark.parametrize("old", ["us3l_deploy", "trainer", "exporters", "benchmarks", "us3l.train", "us3l.export",
                                 "us3l.bench"])
def test_old_packages_are_gone(old):
    """No shims: the old top-level packages and the old room names do not import."""
    proc = subprocess.run([sys.executable, "-I", "-c", f"import {old}"], cwd="/", capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr


@pytest.mark.slow
def test_wheel_holds_only_the_us3l_package(tmp_path):
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("us3l_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"us3l", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert "us3l/core/assets/digits.npz" in names and "us3l/py.typed" in names
    assert not any(n.startswith("us3l/") and "/perf/" in n for n in names)


def _vermin_38(path: Path) -> subprocess.CompletedProcess:
    vermin = Path(sys.executable).with_name("vermin")
    if not vermin.exists():
        pytest.fail("vermin is missing: it comes with the dev extra (pip install -e '.[dev]')")
    return subprocess.run([str(vermin), "--no-tips", "--violations", "-t=3.8-", "--eval-annotations",
                           "--backport", "typing", str(path)], capture_output=True, text=True, timeout=120)


def test_remote_agent_runs_on_jetpack_python(tmp_path):
    """The file uploaded to a Jetson runs on JetPack 5's Python 3.8 (JetPack 6 ships 3.10): checked by
    vermin, a static minimum-version analyser, so no 3.9+ syntax or library call slips in."""
    proc = _vermin_38(PACKAGE / "benchmarks" / "remote" / "agent_ort.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    control = tmp_path / "newer.py"  # the check is not vacuous: 3.9+ code fails it
    control.write_text("def f(d: dict) -> str:\n    return 'x'.removeprefix('y') + str(d | {})\n")
    assert _vermin_38(control).returncode != 0


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_extras_are_named_by_what_they_enable_and_readme_and_ci_agree():
    import re

    project = _pyproject()["project"]
    base, extras = project["dependencies"], project["optional-dependencies"]
    name = lambda req: re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()  # noqa: E731
    assert "kornia" not in {name(d) for d in base} and {name(d) for d in extras["train"]} == {"kornia"}
    assert [name(d) for d in extras["onnxruntime"]] == ["onnxruntime"]  # named after the two distributions
    assert [name(d) for d in extras["onnxruntime-gpu"]] == ["onnxruntime-gpu"]
    readme = (ROOT / "README.md").read_text()
    listed = set(re.findall(r"^\| `\[([a-z0-9-]+)\]` \|", readme, re.MULTILINE))
    assert listed == set(extras), (listed, set(extras))
    first = re.search(r"pip install -e '\.\[([a-z0-9,-]+)\]'", readme)
    ci = re.search(r"pip_install -e '\.\[([a-z0-9,-]+)\]'", (ROOT / ".ci" / "run").read_text())
    assert first and ci and first.group(1) == ci.group(1)  # README's first command is what CI installs
    wanted = set(first.group(1).split(","))
    for extra in list(wanted):  # expand us3l-deploy[...] self-references
        wanted |= {e for d in extras.get(extra, []) if d.startswith("us3l-deploy[")
                   for e in d[len("us3l-deploy["):-1].split(",")}
    assert {"train", "onnxruntime"} <= wanted  # it runs us3l train and the export parity gate


def _without_kornia(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``us3l ARGS`` where kornia cannot be imported (a deploy-only install)."""
    code = ("import sys\n"
            "sys.modules['kornia'] = None  # import kornia now raises ImportError\n"
            "sys.modules['kornia.augmentation'] = None\n"
            f"sys.argv = ['us3l', *{args!r}]\n"
            "from us3l.cli.main import main\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_deploy_only_install_needs_no_kornia(tmp_path):
    export = _without_kornia(["export", "--arch", "us_resnet_mini", "--widths", "0.25", "-o", "onnx",
                              "--onnx-exporter", "torchscript"], tmp_path)
    assert export.returncode == 0 and (tmp_path / "onnx").is_dir(), export.stderr
    widths = _without_kornia(["widths", "--arch", "us_resnet_mini", "--json"], tmp_path)
    assert widths.returncode == 0, widths.stderr
    train = _without_kornia(["train", "--epochs", "1", "--max-steps-per-epoch", "1", "-o", "run"], tmp_path)
    lines = [ln for ln in train.stderr.splitlines() if ln.startswith("error:")]
    assert train.returncode == 2 and len(lines) == 1 and "us3l-deploy[train]" in lines[0], train.stderr
    assert "Traceback" not in train.stderr
