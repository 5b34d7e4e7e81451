"""benchmarks/findings.py names the task and teacher it ran on in its plot titles and tables (not 'tweets')."""

import json

import pytest

from _benchmark_scripts import benchmark_script

@pytest.fixture(scope="module")
def findings():
    pytest.importorskip("matplotlib")
    with benchmark_script("findings") as module:
        yield module


def _row(kind, depth=1):
    return {"kind": kind, "dev_mean": 0.6, "dev_std": 0.01, "teacher_dev": 0.7, "metric": "f1", "amount_hsk": 1.0,
            "depth": depth, "length": None, "width": None, "lr": None, "seeds": 2}


def test_plots_and_tables_name_the_teachers_task_and_metric(findings, tmp_path, monkeypatch):
    import matplotlib.axes

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "hskstore_teacher.json").write_text(json.dumps(
        {"base_model": "/models/bert-base-uncased", "task": {"name": "mrpc"}, "task_ref": {"task": "mrpc"}}))
    subject = findings.subject(str(teacher), None, {})
    assert subject == "mrpc, bert-base-uncased teacher"
    assert findings.subject(str(teacher), str(tmp_path / "pairs.csv"), {}).startswith("pairs, ")
    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, **kw: titles.append(text))
    summary = {"pred": _row("pred"), "full": _row("full"),
               findings._key((1, None, None)): _row("hsk"), findings._key((2, None, None)): _row("hsk", 2)}
    findings.plot("depth", summary, tmp_path / "depth.png", subject)
    assert titles == ["mrpc, bert-base-uncased teacher: depth"]
    assert "dev f1, mean ± sd" in findings.table("depth", summary)
