"""The promotion history of a registered model, written so the MLflow UI shows it readably.

Each event (a guarded or forced promotion, a rollback, an alias moved outside bfn) is one sentence:
a registered-model tag ``bfn.history.NNNN`` (the order), the same sentence as a tag
``bfn.event.NNNN`` on the version it concerns, and that version's description says what it is now.
For example ``promote @champion v3 (previous v2) by ada at 2026-12-03T06:00:00Z steps inf guarded:
1.2000 ± 0.01 beats 1.3000 ± 0.01 | reason: guard passed``. `parse_event` reads a sentence back into
its fields; entries written as JSON by earlier versions of bfn are read too.
"""
from __future__ import annotations

import json
import re
from typing import Any

HISTORY_PREFIX = "bfn.history."  # registered-model tags bfn.history.0001, ...: one event each
EVENT_PREFIX = "bfn.event."  # the same event on its version
_EVENT = re.compile(
    r"^(?P<action>\w+) @(?P<alias>\S+) v(?P<version>\S+) \(previous (?:v(?P<previous>\S+)|none)\) by (?P<by>.*?) "
    r"at (?P<at>\d{4}-\d\d-\d\dT\S+) steps (?P<steps>\S+) (?P<mode>guarded|forced|unguarded|rollback): (?P<guard>.*?) "
    r"\| reason: (?P<reason>.*)$", re.S)


def _mode(entry: dict[str, Any]) -> str:
    if entry["action"] in ("rollback", "unguarded"):
        return entry["action"]
    return "forced" if entry.get("forced") else "guarded"


def format_event(entry: dict[str, Any]) -> str:
    """One readable sentence holding every field of a history entry."""
    previous = f"v{entry['previous']}" if entry.get("previous") else "none"
    guard = (entry.get("guard") or "-").replace("|", "/")
    return (f"{entry['action']} @{entry['alias']} v{entry['version']} (previous {previous}) by {entry['by']} at {entry['at']} "
            f"steps {entry.get('steps') or '-'} {_mode(entry)}: {guard} | reason: {entry.get('reason') or '-'}")


def parse_event(text: str) -> dict[str, Any]:
    """The fields of a sentence written by format_event (or of an older JSON entry)."""
    if text.startswith("{"):
        return json.loads(text)
    found = _EVENT.match(text)
    if not found:
        return {"action": "unknown", "alias": "", "version": "", "previous": None, "by": "", "at": "", "reason": text,
                "forced": False, "guard": "", "steps": ""}
    entry = found.groupdict()
    entry["forced"] = entry.pop("mode") in ("forced", "unguarded")
    entry["steps"] = "" if entry["steps"] == "-" else entry["steps"]
    return entry


def history(client, name: str) -> list[dict[str, Any]]:
    tags = client.get_registered_model(name).tags
    return [parse_event(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]


def append_event(client, name: str, entry: dict[str, Any]) -> None:
    """Record an event (call under the registry lock: the numbering reads then writes)."""
    n = len(history(client, name)) + 1
    text = format_event(entry)
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{n:04d}", text)
    client.set_model_version_tag(name, entry["version"], f"{EVENT_PREFIX}{n:04d}", text)
    what = {"promote": "promoted", "rollback": "restored by a rollback", "unguarded": "set outside bfn, unguarded"}
    client.update_model_version(name, entry["version"], description=(
        f"@{entry['alias']} since {entry['at']}: {what.get(entry['action'], entry['action'])} by {entry['by']}"
        f"{' (forced)' if entry['action'] == 'promote' and entry.get('forced') else ''}; {entry.get('reason') or ''}"))
