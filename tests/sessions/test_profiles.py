"""The TOML config: parsing, one message naming key and line for every bad file, where the file
is looked for, and precedence flag > profile > default through the real CLI parser."""
from __future__ import annotations

import argparse

import pytest

from engine.sessions.profiles import ConfigError, config_path, load_config, parse_config, resolve

GOOD = """\
default_profile = "terse"
model_dirs = ["~/models", "/opt/llm"]
snapshot_cap_mib = 64

[profiles.terse]
model = "default"
temperature = 0.2
max_new_tokens = 128
stop = ["\\n\\n", "END"]
system_prompt = "Be terse."
context_size = 1024
min_p = 0.05
repetition_penalty = 1.1
banned_ids = [5, 17]

[profiles.terse.timeouts]
chat = 60
bench = "none"

[profiles."big gpu"]
model = "meta-llama/Llama-3.2-1B-Instruct"
device = "cuda"
dtype = "bfloat16"
"""


def test_parse_good_file():
    cfg = parse_config(GOOD)
    assert cfg.default_profile == "terse" and cfg.snapshot_cap_mib == 64.0
    assert [p.name for p in cfg.model_dirs] == ["models", "llm"]
    t = cfg.profiles["terse"]
    assert (t.temperature, t.max_new_tokens, t.stop, t.context_size) == (0.2, 128, ("\n\n", "END"), 1024)
    assert t.timeouts == {"chat": 60.0, "bench": None}
    assert cfg.profiles["big gpu"].dtype == "bfloat16"
    assert cfg.profile(None) is t  # default_profile
    assert cfg.profile("big gpu").device == "cuda"


@pytest.mark.parametrize("text, line, words", [
    ('[profiles.a]\nmodel = "x"\ntemperature = "hot"\n', 3, ["profiles.a.temperature", "number", "string"]),
    ('[profiles.a]\nmax_new_tokens = 1.5\n', 2, ["profiles.a.max_new_tokens", "integer"]),
    ('[profiles.a]\n\ntemprature = 0.1\n', 3, ["profiles.a.temprature", "not a known"]),
    ('snapshot_cap_mib = true\n', 1, ["snapshot_cap_mib", "number", "boolean"]),
    ('[profiles.a]\nstop = "x"\n', 2, ["profiles.a.stop", "list"]),
    ('[profiles.a]\ndtype = "int3"\n', 2, ["profiles.a.dtype", "one of"]),
    ('[profiles.a]\ndevice = "gpu"\n', 2, ["profiles.a.device", "cuda:N"]),
    ('[profiles.a]\nmin_p = 2\n', 2, ["profiles.a.min_p", "[0, 1]"]),
    ('[profiles.a]\nbanned_ids = [1, -3]\n', 2, ["profiles.a.banned_ids", "item 2"]),
    ('[profiles.a]\nbanned_ids = ["a"]\n', 2, ["profiles.a.banned_ids", "whole number"]),
    ('[profiles.a]\nstop = [' + ", ".join(['"s"'] * 17) + ']\n', 2,
     ["profiles.a.stop", "17 given, at most 16"]),
    ('[profiles.a]\nstop = ["' + "x" * 1001 + '"]\n', 2, ["profiles.a.stop", "item 1", "too long"]),
    ('[profiles.a.timeouts]\nchat = "soon"\n', 2, ["profiles.a.timeouts.chat", "seconds"]),
    ('[profiles.a.timeouts]\nlunch = 5\n', 2, ["profiles.a.timeouts.lunch", "job kind"]),
    ('default_profile = "nope"\n[profiles.a]\n', 1, ["default_profile", "nope"]),
    ('[profiles.a]\nmodel = \n', 2, ["not valid TOML"]),
])
def test_bad_file_names_key_and_line(text, line, words):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    msg = str(e.value)
    assert f"line {line}:" in msg, msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg  # one message, one line


def test_where_the_file_is(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == (tmp_path / "xdg" / "tokenforge" / "config.toml", False)
    assert load_config().profiles == {}  # a missing default file is an empty config
    monkeypatch.setenv("TOKENFORGE_CONFIG", str(tmp_path / "env.toml"))
    assert config_path() == (tmp_path / "env.toml", False)
    assert load_config().profiles == {}  # the variable names where it lives: not written yet
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "typed.toml"))  # a typed --config must exist
    assert config_path(str(tmp_path / "flag.toml"))[0] == tmp_path / "flag.toml"  # flag > env


def test_unknown_profile_lists_known():
    with pytest.raises(ConfigError, match=r"unknown profile 'x'.*big gpu, terse"):
        parse_config(GOOD).profile("x")


def test_resolve_precedence():
    p = parse_config(GOOD).profiles["terse"]
    defaults = {"temperature": 0.7, "max_new_tokens": 256, "top_p": 0.95}
    out = resolve({"max_new_tokens": 9}, p, defaults)
    assert out == {"temperature": 0.2, "max_new_tokens": 9, "top_p": 0.95}
    assert resolve({}, None, defaults) == defaults


def _cli(argv, monkeypatch, tmp_path, text=GOOD):
    from app.cli import _load_commands, build_parser
    from app.commands import profile_args

    cfg = tmp_path / "c.toml"
    cfg.write_text(text, encoding="utf-8")
    monkeypatch.setenv("TOKENFORGE_CONFIG", str(cfg))
    args = build_parser(_load_commands()).parse_args(argv)
    return profile_args.apply(args)


def test_cli_flag_beats_profile_beats_default(monkeypatch, tmp_path):
    a = _cli(["chat", "--temperature", "0.9"], monkeypatch, tmp_path)  # default_profile terse
    assert a.temperature == 0.9                      # flag
    assert a.max_new_tokens == 128                   # profile
    assert a.top_p == 0.95                           # built-in default
    assert a.stop == ["\n\n", "END"] and a.system == "Be terse." and a.context_size == 1024
    assert (a.min_p, a.repetition_penalty, a.banned_ids) == (0.05, 1.1, (5, 17))
    a = _cli(["chat", "--banned-ids", "9, 2", "--min-p", "0.2"], monkeypatch, tmp_path)
    from app.argcheck import check_args

    check_args(a, command="chat")  # the one validation layer types the list
    assert (a.min_p, a.banned_ids) == (0.2, (9, 2))
    a = _cli(["chat", "--stop", "X", "--profile", "big gpu"], monkeypatch, tmp_path)
    assert (a.model, a.device, a.dtype, a.stop) == ("meta-llama/Llama-3.2-1B-Instruct", "cuda",
                                                    "bfloat16", ["X"])
    assert a.max_new_tokens == 256 and a.temperature == 0.7  # not in that profile: defaults
    a = _cli(["chat"], monkeypatch, tmp_path, text="")
    assert (a.temperature, a.max_new_tokens, a.stop, a.system, a.model) == (0.7, 256, [], None, "default")


def test_every_command_takes_profile(monkeypatch, tmp_path):
    for argv in (["tokenize", "x"], ["bench", "list"], ["search", "--prompt", "p", "--reward", "words:a"], [],
                 ["attack", "--request", "r", "--response", "s"]):
        a = _cli(argv + ["--profile", "big gpu"], monkeypatch, tmp_path)
        assert a.tf_profile.name == "big gpu", argv


def test_tui_settings_take_the_profile(monkeypatch, tmp_path):
    from app.settings import AppSettings

    a = _cli(["--profile", "terse"], monkeypatch, tmp_path)
    s = AppSettings.from_args(a)
    assert (s.system_prompt, s.sampling.temperature, s.sampling.max_new_tokens) == ("Be terse.", 0.2, 128)
    assert s.sampling.stop_strings == ("\n\n", "END") and s.context_size == 1024
    assert (s.sampling.min_p, s.sampling.repetition_penalty, s.sampling.banned_ids) == \
        (0.05, 1.1, (5, 17))
    assert s.timeouts["chat"] == 60.0 and s.timeouts["bench"] is None and "chat" in s.user_timeouts
    assert s.profile == "terse"


def test_bad_config_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    from app.cli import main

    cfg = tmp_path / "bad.toml"
    cfg.write_text('[profiles.a]\ntemperature = "hot"\n', encoding="utf-8")
    assert main(["--config", str(cfg), "bench", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 2" in err and "profiles.a.temperature" in err and len(err.splitlines()) == 1
