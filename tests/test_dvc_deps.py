"""dvc.yaml's `deps` of each stage list exactly the code it runs: its script and every
posttrain module the script imports, directly or through other modules (imports inside
functions included), but for the few that cannot change a result (NOT_DEPS). A missing
dep lets DVC skip a stage whose code changed; an extra one reruns a stage for nothing."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# Imported everywhere, shape no result (dvc.yaml's header says why): not deps.
NOT_DEPS = {"posttrain/__init__.py", "posttrain/tracking.py", "posttrain/errors.py", "posttrain/config.py"}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """posttrain module files that `path` imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name == "posttrain" or name.startswith("posttrain."):
                file = REPO / (name.replace(".", "/") + ".py")
                if file.is_file():
                    found.add(str(file.relative_to(REPO)))
    return found


def code_closure(script: str) -> set[str]:
    todo, seen = [script], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(imported_modules(REPO / current) - seen)
    return seen - NOT_DEPS


def stage_script(stage: dict) -> str:
    command = stage["cmd"]
    return next(word for word in command.split() if word.startswith("stages/") and word.endswith(".py"))


@pytest.mark.parametrize("name", list(STAGES))
def test_stage_deps_are_exactly_the_code_it_imports(name):
    stage = STAGES[name]
    stage = stage.get("do", stage)  # foreach stages keep their body under `do`
    declared = {dep for dep in stage["deps"] if dep.endswith(".py")}
    imported = code_closure(stage_script(stage))
    assert not imported - declared, f"{name}: imports code dvc.yaml does not list: {sorted(imported - declared)}"
    assert not declared - imported, f"{name}: dvc.yaml lists code it does not import: {sorted(declared - imported)}"


def logged_sections(script: str) -> list[str]:
    """The SECTIONS list a stage script logs to MLflow and keys its resumable checkpoints by."""
    for node in ast.parse((REPO / script).read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["SECTIONS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{script} defines no SECTIONS")


@pytest.mark.parametrize("name", [name for name, stage in STAGES.items() if stage.get("do", stage).get("params")])
def test_stage_logs_the_params_sections_dvc_yaml_lists(name):
    # `launch` is how a stage starts (processes), not a knob of what it trains: dvc.yaml
    # lists it so that a change reruns the stage, and the stage's metrics record `processes`.
    stage = STAGES[name].get("do", STAGES[name])
    assert logged_sections(stage_script(stage)) == [p for p in stage["params"] if p != "launch"]
