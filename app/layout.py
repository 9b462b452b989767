"""Terminal-size classes shared by the app and its screens (80×24 is a supported size).

Textual adds a screen class per breakpoint: ``-narrow`` below 100 columns, ``-short`` below
``SHORT_ROWS`` rows; app/app.tcss shapes each screen for them. On a short screen the form
widgets also drop their borders (Textual's ``compact`` style), which CSS cannot switch."""
from __future__ import annotations

NARROW_COLUMNS = 100
SHORT_ROWS = 32
HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_COLUMNS, "-wide")]
VERTICAL_BREAKPOINTS = [(0, "-short"), (SHORT_ROWS, "-tall")]
#: widgets whose ``compact`` the screens set on a short terminal
COMPACT_WIDGETS = "Input, Select, Button, Checkbox, TextArea"
