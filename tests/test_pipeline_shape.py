"""The pipeline's shape is declared once, in dvc.yaml: a checkpoint added to
vars pipeline.checkpoints is evaluated, compared and reported with no other edit."""

import shutil
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
NEW_STAGE = {"cmd": "PYTHONPATH=. python stages/kto.py --start models/sft --out models/kto", "deps": ["models/sft"],
             "outs": ["models/kto"]}


def stages_of(root: Path) -> dict:
    """name -> resolved stage, and the stage graph, as DVC reads root/dvc.yaml."""
    import networkx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        stages = {stage.name: stage for stage in repo.index.stages}
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        upstream = {name: {s.name for s in networkx.descendants(graph, stage)} for name, stage in stages.items()}
        resolved = {name: (stage.cmd, [str(dep.def_path) for dep in stage.deps]) for name, stage in stages.items()}
        return resolved, upstream


def test_a_checkpoint_joins_evaluate_compare_and_report_by_one_line(tmp_path):
    from dvc.repo import Repo

    Repo.init(str(tmp_path), no_scm=True).close()
    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    checkpoints = pipeline["vars"][0]["pipeline"]["checkpoints"]
    checkpoints.insert(checkpoints.index("dpo") + 1, "kto")  # the one line
    pipeline["stages"] = {"kto": NEW_STAGE, **pipeline["stages"]}  # the new stage's own block
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))

    stages, upstream = stages_of(tmp_path)
    cmd, deps = stages["evaluate@kto"]
    assert "--checkpoint models/kto " in cmd and "--metrics metrics/eval/kto.json " in cmd and "models/kto" in deps
    for name in ("compare", "report"):
        cmd = stages[name][0]
        assert "--checkpoints base sft dpo kto rl safety " in cmd, cmd
        assert {"evaluate@kto", "kto"} <= upstream[name], f"{name} does not run after evaluate@kto"
