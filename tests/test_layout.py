"""The package's shape: models never import losses, the shared types live in one neutral module, no library file is
long without saying why, and ``import hf_distill`` makes the zoo available to timm and the Auto classes."""

import ast
import subprocess
import sys

from tests.conftest import REPO, repository_changes

PACKAGE = REPO / "hf_distill"


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in ast.walk(child))
            continue
        yield node
        yield from _runtime_nodes(node)


def _imported_modules(path, runtime_only: bool = False) -> list[str]:
    """Absolute names of every module a file imports (relative imports resolved against its package); with
    ``runtime_only``, not those imported under ``if TYPE_CHECKING:``."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in _runtime_nodes(tree) if runtime_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def test_the_import_scanner_sees_relative_and_absolute_imports(tmp_path):
    probe = PACKAGE / "models" / "taps.py"
    assert "hf_distill.features" in _imported_modules(probe)  # `from ..features import ...`


def test_models_never_import_losses():
    offenders = {
        str(p.relative_to(REPO)): m
        for p in sorted((PACKAGE / "models").rglob("*.py"))
        for m in _imported_modules(p)
        if m == "hf_distill.methods" or m.startswith("hf_distill.methods.")
    }
    assert not offenders, offenders


MAX_LINES = 500


def _first_paragraph(path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def test_a_long_library_file_states_why_in_its_first_paragraph():
    """A file of the package over :data:`MAX_LINES` lines says so ("longer than 500 lines because ...") in the first
    paragraph of its module docstring, so a long file is a decision, not an accident."""
    unexplained = {
        str(p.relative_to(REPO)): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
        and f"longer than {MAX_LINES} lines because" not in _first_paragraph(p)
    }
    assert not unexplained, f"files over {MAX_LINES} lines without a reason at their top: {unexplained}"


def test_the_length_rule_reads_only_the_first_paragraph(tmp_path):
    f = tmp_path / "long.py"
    f.write_text('"""Short summary.\n\nIt is longer than 500 lines because reasons."""\n')
    assert "because" not in _first_paragraph(f)
    f.write_text('"""Short summary, longer than 500 lines because it is one class.\n\nMore."""\n')
    assert f"longer than {MAX_LINES} lines because" in _first_paragraph(f)


def test_shared_types_have_one_home_and_the_old_imports_still_work():
    from hf_distill import features
    from hf_distill.methods import FeatureNeeds, Features, FeatureSpec
    from hf_distill.methods.base import Features as BaseFeatures
    from hf_distill.models import taps

    assert (Features, FeatureSpec, FeatureNeeds) == (
        features.Features,
        features.FeatureSpec,
        features.FeatureNeeds,
    )
    assert (
        BaseFeatures is features.Features and taps.FeatureNeeds is features.FeatureNeeds
    )  # one request type
    assert not hasattr(taps, "TapRequest")  # no second name for it


def test_import_hf_distill_registers_the_zoo_with_timm_and_the_auto_classes():
    code = (
        "import sys, hf_distill, timm\n"
        "from transformers import AutoConfig, AutoModelForImageClassification\n"
        "m = timm.create_model('cifar_resnet20', num_classes=10)\n"
        "cfg = AutoConfig.for_model('hf_distill_cifar', architecture='resnet20', num_labels=10)\n"
        "hf = AutoModelForImageClassification.from_config(cfg)\n"
        "from hf_distill.models.cifar_common import CifarBackbone\n"
        "print(isinstance(m, CifarBackbone), type(hf).__name__, 'hf_distill.models.timm_cifar' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "CifarForImageClassification", "True"]


def test_the_repository_guard_sees_new_files_but_not_the_runs_own(tmp_path):
    """The session guard of ``tests/conftest.py``: a file written into a checkout is reported (ignored or not),
    bytecode and caches are not, and a tree without git is no error."""
    assert repository_changes(tmp_path) is None  # not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("outputs/\n")
    before = repository_changes(tmp_path)
    for run_file in ("__pycache__/m.pyc", ".pytest_cache/v", "pkg/__pycache__/m.pyc", ".venv-ci/bin/python"):
        (tmp_path / run_file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / run_file).write_text("x")
    assert repository_changes(tmp_path) == before
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "model.safetensors").write_text("x")
    (tmp_path / "card.md").write_text("x")
    assert repository_changes(tmp_path) - before == {"!! outputs/model.safetensors", "?? card.md"}


#: the application layer above the core: the package's front door, the run entry point, the Hub layer and transfer
ABOVE_THE_CORE = (
    "hf_distill/__init__.py",
    "hf_distill/run/lifecycle.py",
    "hf_distill/hub/",
    "hf_distill/transfer/",
)


def _module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports (function-local imports included)."""
    files = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        targets = set()
        for m in _imported_modules(path, runtime_only=True):
            while m and m not in files:  # `from .x import name`: the module x (name is an attribute)
                m = m.rpartition(".")[0]
            if m and m != name and m != "hf_distill":  # the package root only re-exports
                targets.add(m)
        graph[name] = targets
    return graph


def test_the_core_never_imports_the_hub_layer():
    offenders = {
        str(p.relative_to(REPO)): m
        for p in sorted(PACKAGE.rglob("*.py"))
        if not str(p.relative_to(REPO)).startswith(ABOVE_THE_CORE)
        for m in _imported_modules(p)
        if m == "hf_distill.hub" or m.startswith("hf_distill.hub.")
    }
    assert not offenders, offenders


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_the_package():
    cycles = _cycles(_import_graph())
    assert not cycles, cycles


#: the core, layer by layer: each group may import only the groups after it (and the neutral top-level modules)
LAYERS = ("hf_distill.training", "hf_distill.methods", "hf_distill.data", "hf_distill.models")
ABOVE = ("hf_distill.run", "hf_distill.hub", "hf_distill.transfer")


def _group(module: str) -> str | None:
    return next((g for g in LAYERS + ABOVE if module == g or module.startswith(g + ".")), None)


def test_the_package_is_grouped_by_layer_and_arrows_point_down():
    """training -> methods -> data -> models (models never import methods: the test above), and none of them imports
    run/, hub/ or transfer/, the layers above the core."""
    allowed = {g: set(LAYERS[i + 1 :]) for i, g in enumerate(LAYERS)}
    allowed["hf_distill.methods"].discard(
        "hf_distill.models"
    )  # methods see models' features only via features.py
    allowed["hf_distill.methods"].add("hf_distill.models")  # (taps' probe helpers are read by maps.py)
    offenders = []
    for module, targets in _import_graph().items():
        here = _group(module)
        if here not in LAYERS:
            continue
        for t in targets:
            there = _group(t)
            if there is None or there == here:
                continue
            if there in ABOVE or there not in allowed[here]:
                offenders.append(f"{module} -> {t}")
    assert not offenders, offenders


def test_a_module_that_moved_still_imports_from_its_old_path_with_a_warning():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "import hf_distill\n"
        "from hf_distill.training.trainer import DistillationTrainer\n"
        "try:\n"
        "    import hf_distill.trainer\n"
        "except DeprecationWarning as e:\n"
        "    print(e)\n"
        "warnings.simplefilter('ignore')\n"
        "import hf_distill.trainer as old, hf_distill.losses.kd as old_kd, hf_distill.methods.kd as kd\n"
        "from hf_distill.data import collate\n"
        "from hf_distill.run import distill\n"
        "print(old.DistillationTrainer is DistillationTrainer, old_kd is kd, hf_distill.DistillationLoss is "
        "hf_distill.DistillationMethod, distill is hf_distill.distill)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "hf_distill.trainer moved to hf_distill.training.trainer; import it from there"
    assert lines[1].split() == ["True"] * 4


def test_a_renamed_method_name_still_resolves_with_a_warning():
    import pytest

    from hf_distill.methods.registry import resolve_objective

    with pytest.warns(FutureWarning, match="ie_kd is now called iekd_kd"):
        old = resolve_objective("ie_kd")
    assert old == resolve_objective("iekd_kd")
