"""The one export envelope (engine/export.py) and its naming rule: every job's JSON export has
the same keys; names are time-stamped and never replace an earlier export; a result's own
``to_dict`` is used; the dashboard's export writes its aggregate in the same envelope."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from engine.export import FORMAT, export_job, job_document, unique_paths

KEYS = {"format", "kind", "state", "model", "settings", "started_at", "finished_at",
        "exported_at", "result"}


@dataclass
class Result:
    score: float

    def to_dict(self) -> dict:
        return {"score": self.score, "via": "to_dict"}


def test_envelope_keys_and_times():
    doc = job_document("advtok", Result(1.5), settings={"iters": 2}, model="m",
                       state="cancelled", started_at=0.0, finished_at=60.0)
    assert set(doc) == KEYS and doc["format"] == FORMAT
    assert doc["result"] == {"score": 1.5, "via": "to_dict"}
    assert doc["state"] == "cancelled" and doc["settings"] == {"iters": 2} and doc["model"] == "m"
    assert doc["started_at"][:4] in ("1969", "1970") and doc["started_at"] < doc["finished_at"]
    assert job_document("chat", {"turns": []})["started_at"] is None


def test_exports_never_replace_each_other(tmp_path):
    paths = [export_job(tmp_path / "new", "attack", "advtok", {"n": i}) for i in range(3)]
    assert len(set(paths)) == 3 and all(p.parent == tmp_path / "new" for p in paths)
    assert [json.loads(p.read_text())["result"]["n"] for p in paths] == [0, 1, 2]
    md, js = unique_paths(tmp_path, "chat", (".md", ".json"))
    assert md.stem == js.stem and md.suffix == ".md"
    js.write_text("{}")  # a JSON of that name exists: both names move on together
    md2, js2 = unique_paths(tmp_path, "chat", (".md", ".json"))
    assert md2.stem == js2.stem != md.stem
    assert not list(tmp_path.glob("**/*.tmp"))


def test_the_dashboard_export_writes_the_envelope(tmp_path):
    from app.engines import Engine

    runs = Path(__file__).resolve().parent / "fixtures" / "bench_runs.jsonl"
    paths = Engine().bench_export(str(runs), str(tmp_path))
    (env,) = [p for p in paths if p.endswith(".json")]
    doc = json.loads(Path(env).read_text())
    assert set(doc) == KEYS and doc["kind"] == "bench"
    assert doc["settings"]["runs"] == str(runs) and doc["finished_at"]
    assert doc["result"]["rows"] and {"method", "cost", "ratio"} <= set(doc["result"]["rows"][0])
