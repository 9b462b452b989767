"""Model discovery and the picker, with tiny random models in a temporary Hugging Face cache
layout (models--ORG--NAME/snapshots/REV + refs/main) and a config folder: facts read from the
files (parameters from the safetensors headers, lean support), then a Pilot switch that cancels
the running job and reloads with the real engine."""
from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable

from app.app import TokenforgeApp
from app.engines import Engine
from app.settings import AppSettings

from app_fakes import DEADLINE_S, until
from tinymodel import save_tiny


@pytest.fixture(scope="module")
def hub(tmp_path_factory, tokenizer):
    from engine.lm.tiny import tiny_llama

    root = tmp_path_factory.mktemp("hub")
    for name, layers in (("tiny-a", 2), ("tiny-b", 3)):
        repo = root / f"models--tf-test--{name}"
        save_tiny(tiny_llama(tokenizer, seed=1, layers=layers), repo / "snapshots" / "abc123")
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("abc123")
    # not a causal LM: skipped
    enc = root / "models--tf-test--encoder" / "snapshots" / "r1"
    enc.mkdir(parents=True)
    (enc / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    return root


def test_discovery_reads_the_hub_layout(hub, tmp_path, tokenizer, monkeypatch):
    from engine.lm.tiny import tiny_llama
    from engine.sessions.discovery import discover

    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    extra = tmp_path / "mine"
    save_tiny(tiny_llama(tokenizer, seed=2, tied=True), extra / "tied")
    found = {e.name: e for e in discover([extra], include_bundled=False) if e.source != "converted"}
    assert set(found) == {"tf-test/tiny-a", "tf-test/tiny-b", "tied"}
    a, b, tied = found["tf-test/tiny-a"], found["tf-test/tiny-b"], found["tied"]
    assert a.source == "hf-cache" and tied.source == "config"
    assert (a.architecture, a.model_type, a.dtype, a.lean) == ("LlamaForCausalLM", "llama", "float32", True)
    model = tiny_llama(tokenizer, seed=1, layers=3).model
    assert b.params == sum(p.numel() for p in model.parameters())  # exact, from the headers
    assert tied.params < a.params  # the tied head is stored once
    assert a.size_bytes > a.params * 4 > 0


async def test_picker_switches_models(hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    start = hub / "models--tf-test--tiny-a" / "snapshots" / "abc123"
    settings = AppSettings(model=str(start))
    settings.export_dir = tmp_path
    app = TokenforgeApp(engine=Engine(), settings=settings, install_signals=False)
    try:
        async with app.run_test(size=(140, 36)) as pilot:
            await until(pilot, lambda: app.model_state == "ready")
            assert app.lm.name == "tf-test/tiny-a"  # a hub snapshot is named by its repo id
            first = app.lm
            await pilot.press("f8")
            await until(pilot, lambda: app.current_mode == "models")
            scr = app.screen
            table = scr.query_one("#model-table", DataTable)
            await until(pilot, lambda: any(e.name == "tf-test/tiny-b" for e in scr.entries))
            names = [e.name for e in scr.entries]
            assert "tf-test/encoder" not in names
            row = table.get_row_at(names.index("tf-test/tiny-a"))
            assert str(row[0]) == "●" and str(row[3]) == "LlamaForCausalLM" and str(row[7]) == "yes"
            # a long job is running when the user switches: it is cancelled
            job = app.runner.start("chat", lambda *, cancel, **_: cancel.wait(DEADLINE_S) or None)
            table.focus()
            table.move_cursor(row=names.index("tf-test/tiny-b"))
            await pilot.press("enter")
            await until(pilot, lambda: job.done)
            assert job.token.cancelled
            await until(pilot, lambda: app.model_state == "ready" and app.lm is not first)
            assert app.lm.name == "tf-test/tiny-b" and app.lm.config.num_hidden_layers == 3
            await until(pilot, lambda: "loaded" in str(scr.query_one("#models-status").content))
    finally:
        for j in app.runner.jobs.values():
            j.cancel("shutdown")


async def test_picker_applies_a_profile(make_app, tmp_path):
    from textual.widgets import Select

    from engine.sessions.profiles import parse_config

    from app_fakes import FakeEngine

    app = make_app(engine=FakeEngine(), autoload=True)
    app.settings.profiles = parse_config(
        '[profiles.cool]\ntemperature = 0.1\nsystem_prompt = "Short."\n'
        '[profiles.other]\nmodel = "/models/other"\nmax_new_tokens = 7\n').profiles
    async with app.run_test(size=(140, 36)) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        first = app.lm
        await pilot.press("f8")
        await until(pilot, lambda: app.current_mode == "models")
        sel = app.screen.query_one("#profile-select", Select)
        sel.value = "cool"
        await until(pilot, lambda: app.settings.profile == "cool")
        assert (app.settings.sampling.temperature, app.settings.system_prompt) == (0.1, "Short.")
        assert app.lm is first  # same model: no reload
        sel.value = "other"
        await until(pilot, lambda: app.settings.profile == "other" and app.model_state == "ready"
                    and app.lm is not first, 10)
        assert app.settings.model == "/models/other" and app.settings.sampling.max_new_tokens == 7


def test_a_converted_gguf_is_listed_once_with_its_facts(tmp_path, tokenizer, monkeypatch):
    """A GGUF and its converted folder are one model: one row, under the GGUF's name, with the
    parameters and architecture read from the converted copy."""
    from engine.lm.model import converted_dir
    from engine.lm.tiny import tiny_llama
    from engine.sessions.discovery import discover

    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nohub"))
    gguf = tmp_path / "ggufs" / "little.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + b"\0" * 4096)
    before = discover([gguf.parent], include_bundled=False)
    assert [(e.name, e.params) for e in before] == [("little.Q4", None)]  # not converted yet
    save_tiny(tiny_llama(tokenizer, seed=3), converted_dir(gguf))
    after = discover([gguf.parent], include_bundled=False)
    assert len(after) == 1
    e = after[0]
    assert (e.name, e.spec, e.architecture) == ("little.Q4", str(gguf), "LlamaForCausalLM")
    assert e.params and e.path == str(gguf)
