"""Finding text in saved messages (the F7 search): sqlite's LIKE narrows the rows, then a
case-insensitive find gives each hit a one-line snippet."""
from __future__ import annotations

import sqlite3


def search_messages(db: sqlite3.Connection, text: str, limit: int = 200) -> list[tuple[str, str, str]]:
    """(session, role, snippet) for every message containing ``text`` (case-insensitive)."""
    if not text.strip():
        return []
    pat = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = db.execute(
        "SELECT DISTINCT s.name, t.user, t.answer FROM turns t JOIN branches b ON t.branch_id=b.id "
        "JOIN sessions s ON b.session_id=s.id WHERE t.user LIKE ? ESCAPE '\\' "
        "OR t.answer LIKE ? ESCAPE '\\' ORDER BY s.updated DESC LIMIT ?",
        (pat, pat, limit)).fetchall()
    out = []
    low = text.lower()
    for name, user, answer in rows:
        for role, body in (("user", user), ("assistant", answer)):
            if not isinstance(body, str) or not isinstance(name, str):
                continue  # a value this tool does not write: list() says so
            i = body.lower().find(low)
            if i >= 0:
                out.append((name, role, _snippet(body, i, len(text))))
    return out


def _snippet(body: str, i: int, n: int, width: int = 30) -> str:
    a, b = max(0, i - width), min(len(body), i + n + width)
    s = body[a:b].replace("\n", " ")
    return ("…" if a else "") + s + ("…" if b < len(body) else "")
