"""Settings: model spec (reload), engine path, sampling, timeouts per job kind, export folder.

Every field is validated as it is typed (app/validate.py); an invalid field shows its message
inline and disables Apply/Reload, so nothing unvalidated reaches the engine. Timeouts start
derived from the measured decode speed (held within 30 s … 30 min); each row shows how (token
budget ÷ tok/s × margin); the bench row follows the dashboard's grid as its form changes.
Editing one makes that one the user's; "Re-derive" gives them all back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, Select, Static

from app.inert import notice, plain, tesc, text
from app.messages import SettingsChanged
from app.profile_choice import NO_PROFILE, profile_options, profile_summary
from app.screens.base import ToolScreen
from engine.lm.config import DTYPES, ENGINE_PATHS, ModelConfig, SamplingConfig
from app.settings import (BENCH_CAP_S, CAP_S, FLOOR_S, SAFETY, TIMEOUT_KINDS,
                          fmt_duration)
from app.validate import (FieldCheck, first_error, list_text, parse_dir, parse_field,
                          parse_model_spec, parse_timeout)

PATH_LABELS = {"fast": "fast (lean forward, exact)", "standard": "standard (HF forward)",
               "int8": "int8 (weight-only decode, INEXACT, faster)"}


def _fmt_timeout(t: Optional[float]) -> str:
    return "" if t is None else f"{t:g}"


class SettingsScreen(ToolScreen):
    """Edit the app's settings."""

    #: Apply is below the fold on a short terminal: its key is in the footer at every size
    BINDINGS = [Binding("ctrl+s", "apply", "Apply", id="settings.apply",
                        tooltip="Apply and save the settings (also Enter in a field)")]

    def __init__(self) -> None:
        super().__init__(id="settings-screen")
        self.shown: dict[str, str] = {}  # field id → the applied value it last showed
        self.applied_once = False

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("settings: Apply", "Apply and save the settings (ctrl+s; enter in a field)",
                            self.action_apply)
        yield SystemCommand("settings: Next profile",
                            "Use the next config profile (then none); its fields are marked profile",
                            self.action_next_profile)
        yield SystemCommand("settings: Re-derive timeouts",
                            "Drop your timeouts; derive every one from the measured speed",
                            self.action_derive)

    def edited(self) -> list[str]:
        """Fields whose text differs from the applied value they showed (unapplied edits)."""
        if not self.children:
            return []
        return [fid for fid, v in self.shown.items()
                if self.query_one(f"#{fid}", Input).value != v]

    def before_leave(self, proceed: Callable[[], None]) -> bool:
        """With unapplied edits, ask once (apply / discard / stay); True when it asked."""
        from app.screens.leave_settings import LeaveSettings

        n = len(self.edited())
        if not n:
            return False

        def chosen(choice: Optional[str]) -> None:
            if choice == "apply" and self.apply():
                proceed()
            elif choice == "discard":
                for fid, v in self.shown.items():
                    self.query_one(f"#{fid}", Input).value = v
                self.validate_all()
                self._show_edit_state()
                proceed()

        self.app.push_screen(LeaveSettings(n), chosen)
        return True

    def _context_length(self) -> Optional[int]:
        lm = self.loaded_model
        return None if lm is None else lm.context_length

    def _max_new_hi(self) -> Optional[int]:
        """An answer must leave room for a prompt: below the loaded model's context."""
        ctx = self._context_length()
        return ctx - 1 if ctx else None

    def parsers(self) -> dict[str, Callable[[str], Any]]:
        """Input id → parser (raising InputError)."""
        p: dict[str, Callable[[str], Any]] = {
            "set-model": parse_model_spec,
            "set-device": lambda v: parse_field(v, ModelConfig, "device"),
            "set-max-new": lambda v: parse_field(v, SamplingConfig, "max_new_tokens",
                                                 hi=self._max_new_hi()),
            "set-temperature": lambda v: parse_field(v, SamplingConfig, "temperature"),
            "set-top-k": lambda v: parse_field(v, SamplingConfig, "top_k"),
            "set-top-p": lambda v: parse_field(v, SamplingConfig, "top_p"),
            "set-seed": lambda v: parse_field(v, SamplingConfig, "seed"),
            "set-rep": lambda v: parse_field(v, SamplingConfig, "repetition_penalty"),
            "set-min-p": lambda v: parse_field(v, SamplingConfig, "min_p"),
            "set-banned": lambda v: parse_field(v, SamplingConfig, "banned_ids"),
            "set-stop": lambda v: parse_field(v, SamplingConfig, "stop_strings"),
            "set-export": lambda v: parse_dir(v, "export folder"),
        }
        for kind in TIMEOUT_KINDS:
            p[f"timeout-{kind}"] = lambda v, k=kind: parse_timeout(v, f"{k} timeout")
        return p

    def compose_body(self) -> ComposeResult:
        app = self.tokenforge_app
        s = app.settings
        sm = s.sampling
        checks = self.parsers()

        def field(label: str, fid: str, value: str, placeholder: str = "") -> ComposeResult:
            with Horizontal(classes="form-row"):
                yield Label(label, classes="field-label")
                yield Input(value=value, id=fid, placeholder=placeholder, compact=True,
                            validators=[FieldCheck(checks[fid])])
                if fid in self.SOURCE_KEYS:  # where the value came from (profile, model, …)
                    yield Static("", id=f"src-{fid}", classes="field-source")

        with VerticalScroll(id="settings-form"):
            with Horizontal(classes="form-row", id="profile-row"):
                yield Label("profile", classes="field-label")
                yield Select(profile_options(s), value=s.profile or NO_PROFILE, allow_blank=False,
                             id="set-profile", compact=True)
            yield Static("", id="profile-note", classes="note")
            yield Static("[b]Model[/]", classes="section")
            yield from field("model", "set-model", s.model, "default, a directory, a .gguf, a hub id")
            yield from field("device", "set-device", s.device, "auto, cpu, mps, cuda, cuda:N")
            with Horizontal(classes="form-row"):
                yield Label("dtype", classes="field-label")
                yield Select([(d, d) for d in DTYPES], value=s.dtype if s.dtype in DTYPES else "auto",
                             allow_blank=False, id="set-dtype", compact=True)
                yield Static("", id="src-set-dtype", classes="field-source")
            with Horizontal(classes="form-row"):
                yield Label("engine path", classes="field-label")
                yield Select([(PATH_LABELS.get(p, p), p) for p in ENGINE_PATHS],
                             value=s.engine_path, allow_blank=False, id="set-engine-path",
                             compact=True)
                yield Static("", id="src-set-engine-path", classes="field-source")
            yield Static("[b]Sampling[/]", classes="section")
            yield Static("", id="sampling-source", classes="note")
            yield from field("max new tokens", "set-max-new", str(sm.max_new_tokens))
            yield from field("temperature", "set-temperature", f"{sm.temperature:g}", "0 = greedy")
            yield from field("top-k", "set-top-k", str(sm.top_k), "0 = off")
            yield from field("top-p", "set-top-p", f"{sm.top_p:g}", "1 = off")
            yield from field("seed", "set-seed", "" if sm.seed is None else str(sm.seed),
                             "empty = random")
            yield from field("repetition penalty", "set-rep", f"{sm.repetition_penalty:g}", "1 = off")
            yield from field("min-p", "set-min-p", f"{sm.min_p:g}", "0 = off")
            yield from field("banned ids", "set-banned", list_text(sm.banned_ids),
                             "token ids never chosen, comma-separated")
            yield from field("stop strings", "set-stop",
                             list_text(sm.stop_strings),
                             "comma-separated; \\n = newline")
            yield Static("[b]Timeouts[/] (seconds; empty or 0 = none)", classes="section")
            yield Static("", id="timeouts-note", classes="note")
            for kind in TIMEOUT_KINDS:
                with Horizontal(classes="form-row timeout-row"):
                    yield Label(kind, classes="field-label")
                    yield Input(value=_fmt_timeout(s.timeouts.get(kind)), id=f"timeout-{kind}",
                                compact=True, validators=[FieldCheck(checks[f"timeout-{kind}"])])
                    yield Static("", id=f"src-timeout-{kind}", classes="field-source")
                    yield Static("", id=f"why-{kind}", classes="timeout-why")
            yield Static("[b]Export[/]", classes="section")
            yield from field("export folder", "set-export", str(s.export_dir))
            yield Static("", id="settings-error", classes="inline-error")
            with Horizontal(id="settings-buttons", classes="form-row"):
                yield Button("Apply", id="apply", variant="primary")
                yield Button("Reload model", id="reload", variant="warning")
                yield Button("Re-derive timeouts", id="derive")
            yield Static("", id="settings-edits", classes="status-line")
            yield Static("", id="settings-status", classes="status-line")

    def on_mount(self) -> None:
        super().on_mount()
        self.shown = {inp.id: inp.value for inp in self.query(Input) if inp.id}
        self._refresh_sampling()
        self.settings_changed()
        self.validate_all()

    # -- validation ---------------------------------------------------------------------------
    def collect(self) -> tuple[dict[str, Any], Optional[str]]:
        checks = {fid: (lambda fid=fid, fn=fn: fn(self.query_one(f"#{fid}", Input).value))
                  for fid, fn in self.parsers().items()}
        return first_error(checks)

    def validate_all(self) -> Optional[str]:
        _, err = self.collect()
        self.query_one("#settings-error", Static).update(text(err or ""))  # may quote the input
        self.query_one("#apply", Button).disabled = err is not None
        self.query_one("#reload", Button).disabled = err is not None
        return err

    def on_input_changed(self, event: Input.Changed) -> None:
        self.validate_all()
        self._show_edit_state()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter in any field applies (when every field is valid; else the message says why)."""
        event.stop()
        self.action_apply()

    def _show_edit_state(self) -> None:
        """The status line says "applied" only while nothing was edited since."""
        if not self.children:
            return
        n = len(self.edited())
        st = self.query_one("#settings-edits", Static)
        if n:
            st.update(f"[yellow]{n} unapplied edit(s)[/] — Enter or Apply to use them")
        else:
            st.update("[green]applied and saved[/]" if self.applied_once else "")

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "set-profile":
            self._choose_profile(event.value)
            return
        self.validate_all()

    def _choose_profile(self, name: Any) -> None:
        """A profile chosen (app/profile_choice.py, the path F8 uses too): its values fill the
        fields (those you have not edited), each marked "profile"; one naming another model
        reloads it."""
        from app.profile_choice import choose_profile

        if not isinstance(name, str):
            return
        changed, reload = choose_profile(self.tokenforge_app, name)
        if changed:
            self.notify(("no profile: the values before it are back" if not name else
                         f"profile {name} applied") + (" · reloading the model" if reload else ""),
                        markup=False)

    def action_next_profile(self) -> None:
        """Use the next profile in the list (then none, then the first again)."""
        options = [v for _, v in profile_options(self.tokenforge_app.settings)]
        if len(options) < 2:
            self.notify("no profiles in the config file (--config, $TOKENFORGE_CONFIG)",
                        severity="warning")
            return
        now = self.tokenforge_app.settings.profile or NO_PROFILE
        nxt = options[(options.index(now) + 1) % len(options)] if now in options else options[0]
        self.query_one("#set-profile", Select).value = nxt

    # -- apply --------------------------------------------------------------------------------
    def apply(self) -> bool:
        values, err = self.collect()
        if err:
            self.validate_all()
            return False
        app = self.tokenforge_app
        s = app.settings
        before = dict(s.timeouts)  # what the fields showed: a changed field is the user's
        for k in TIMEOUT_KINDS:
            if values[f"timeout-{k}"] != before.get(k):
                s.set_user_timeout(k, values[f"timeout-{k}"])
        s.set_sampling_by_user(SamplingConfig(
            max_new_tokens=values["set-max-new"], temperature=values["set-temperature"],
            top_k=values["set-top-k"], top_p=values["set-top-p"], seed=values["set-seed"],
            stop_strings=values["set-stop"], repetition_penalty=values["set-rep"],
            min_p=values["set-min-p"], banned_ids=values["set-banned"]))
        s.rederive()  # max new tokens may have changed the derived ones
        s.export_dir = Path(values["set-export"])
        s.device = values["set-device"]
        s.dtype = str(self.query_one("#set-dtype", Select).value)
        path = str(self.query_one("#set-engine-path", Select).value)
        if path != s.engine_path:
            s.engine_path = path
            if app.lm is not None:
                app.engine.set_engine_path(app.lm, path)
                app.sub_title = plain(app.lm.describe())  # the header says when the path is inexact
        s.model = values["set-model"]
        self.shown = {inp.id: inp.value for inp in self.query(Input) if inp.id}
        self.applied_once = True
        self.settings_changed()  # this screen first, at once: the edit state below reads it
        app.notify_screens(SettingsChanged, skip=self)
        self._save()
        self._show_edit_state()
        return True

    def _save(self) -> None:
        from app.settings_file import save

        try:
            save(self.tokenforge_app.settings)
        except OSError as e:
            notice(self, f"settings applied but not saved: {e}", severity="warning", timeout=8)

    def action_apply(self) -> None:
        if self.apply():
            self.notify("Settings applied")

    def action_derive(self) -> None:
        app = self.tokenforge_app
        s = app.settings
        s.timeouts_user_set = False
        s.rederive()
        self.settings_changed()
        app.notify_screens(SettingsChanged, skip=self)
        self._save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        app = self.tokenforge_app
        if event.button.id == "apply":
            self.action_apply()
        elif event.button.id == "reload":
            if self.apply():
                app.load_model()
        elif event.button.id == "derive":
            self.action_derive()

    def settings_changed(self) -> None:
        if not self.children:
            return
        app = self.tokenforge_app
        s = app.settings
        self._refresh_profile()
        for kind in TIMEOUT_KINDS:
            self._show_unless_edited(f"timeout-{kind}", _fmt_timeout(s.timeouts.get(kind)))
        details = s.timeout_details()
        for kind in TIMEOUT_KINDS:
            d = details[kind]
            why = d.explain()
            if kind in s.user_timeouts:
                why = (f"[b]set by you[/] · derived would be {fmt_duration(d.seconds)}: {why}"
                       if d.seconds != s.timeouts.get(kind) else f"set by you (= derived): {why}")
            self.query_one(f"#why-{kind}", Static).update(why)
        if s.measured_tok_s:
            speed = f"measured {s.measured_tok_s:.1f} tok/s ({tesc(s.speed_source or 'speed probe')})"
        else:
            speed = "speed not measured yet: 2 tok/s assumed"
        note = (f"{speed} · budget = max new tokens {s.sampling.max_new_tokens} × work factor · "
                f"margin ×{SAFETY:g} · held within {fmt_duration(FLOOR_S)} … "
                f"{fmt_duration(CAP_S)} · bench: sized to the dashboard's grid "
                f"(methods × queries × (repeats+1) runs of its max new tokens), up to "
                f"{fmt_duration(BENCH_CAP_S)}")
        if s.user_timeouts:
            note += " · Re-derive to drop your values"
        self.query_one("#timeouts-note", Static).update(f"[dim]{note}[/]")

    #: the sampling fields a loaded model's defaults may change (engine.lm.sampling_defaults)
    MODEL_FIELDS = {"temperature": "set-temperature", "top_k": "set-top-k", "top_p": "set-top-p",
                    "repetition_penalty": "set-rep", "min_p": "set-min-p"}

    #: field id → the AppSettings key whose source its tag shows (a profile may set each)
    SOURCE_KEYS = {"set-model": "model", "set-device": "device", "set-dtype": "dtype",
                   "set-engine-path": "engine_path", "set-max-new": "max_new_tokens",
                   "set-temperature": "temperature", "set-top-k": "top_k", "set-top-p": "top_p",
                   "set-rep": "repetition_penalty", "set-min-p": "min_p",
                   "set-banned": "banned_ids", "set-stop": "stop_strings",
                   **{f"timeout-{k}": f"timeout:{k}" for k in TIMEOUT_KINDS}}

    def _field_text(self, fid: str) -> str:
        """The applied value of a profile-settable field, as the form writes it."""
        s = self.tokenforge_app.settings
        key = self.SOURCE_KEYS[fid]
        if key.startswith("timeout:"):
            return _fmt_timeout(s.timeouts.get(key.split(":", 1)[1]))
        if key in ("model", "device"):
            return str(getattr(s, key))
        v = getattr(s.sampling, key)
        return list_text(v) if key in ("banned_ids", "stop_strings") else \
            str(v) if isinstance(v, int) else f"{v:g}"

    def _refresh_profile(self) -> None:
        """The profile in use: the selector, what it sets, the fields it filled (those you have
        not edited) and each field's source tag."""
        s = self.tokenforge_app.settings
        sel = self.query_one("#set-profile", Select)
        want = s.profile or NO_PROFILE
        if sel.value != want:
            sel.set_options(profile_options(s))  # the profiles may have been re-read
            sel.value = want
        self.query_one("#profile-note", Static).update(text(profile_summary(s), "dim"))
        for fid, key in self.SOURCE_KEYS.items():
            if fid in ("set-dtype", "set-engine-path"):
                other = self.query_one(f"#{fid}", Select)
                if other.value != getattr(s, key):
                    other.value = getattr(s, key)
            else:
                self._show_unless_edited(fid, self._field_text(fid))
            src = s.source_of(key)
            self.query_one(f"#src-{fid}", Static).update(
                text(src, "bold $accent" if src == "profile" else "dim"))
        self._refresh_sampling()

    def _show_unless_edited(self, fid: str, want: str) -> None:
        """A value the app changed (re-derived, a model's default) replaces the field only when
        the user has not edited it: a typed (even invalid) value stays, with its message."""
        inp = self.query_one(f"#{fid}", Input)
        if inp.value != want and inp.value == self.shown.get(fid, inp.value):
            inp.value = want
            self.shown[fid] = want

    def _refresh_sampling(self) -> None:
        """Show the values a newly loaded model chose (fields the user has not edited) and
        where every value came from."""
        s = self.tokenforge_app.settings
        for key, fid in self.MODEL_FIELDS.items():
            self._show_unless_edited(fid, f"{getattr(s.sampling, key):g}")
        self.query_one("#sampling-source", Static).update(
            text(f"from: {s.sampling_provenance()}", "dim"))  # profile names come from a file

    def model_changed(self) -> None:
        if not self.children:
            return
        self._refresh_profile()
        app = self.tokenforge_app
        st = {"loading": "[yellow]loading…[/]", "ready": "[green]ready[/]",
              "failed": f"[red]failed: {tesc(app.model_error)}[/]"}.get(app.model_state, "none")
        desc = (f" · {tesc(app.lm.describe())} · context {app.lm.context_length}"
                if app.lm is not None else "")
        self.query_one("#settings-status", Static).update(f"model {st}{desc}")
        self.validate_all()
