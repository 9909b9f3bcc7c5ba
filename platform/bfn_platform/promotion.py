"""Model promotion in the MLflow registry: the likelihood guard, promotion, rollback, registration.
The lock is in registry_lock.py, the readable history in registry_history.py.

A promotion moves an alias (``champion`` by default) to a model version. It is guarded by the
likelihood results that `bfn eval` logs to the version's run (metrics ``test_bits_<label>`` and
``test_bits_se_examples_<label>``, tag ``bfn.eval.test_sha256``): the candidate must have been
evaluated on the same test shards as the current holder of the alias and beat it by more than the
combined standard error. Lower bits are better.

Which standard error: the one across test examples. The claim a promotion makes is that the
candidate models the data better, not only these test examples; the spread across examples covers
both the test set's sampling and the Monte Carlo noise of the bound (it is never smaller than the
Monte Carlo standard error across repeats, which measures the estimator's noise on this one test set).

Concurrency: inside the registry lock a promotion re-reads the alias, decides, moves the aliases,
and re-reads them to verify.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from bfn_platform.errors import BfnError
from bfn_platform.registry_history import append_event, history
from bfn_platform.registry_lock import RegistryLock
from pipelines.lineage import who
from pipelines.names import LEGACY_SE, TAG_TEST_SHA, test_metric, test_se_metric

DEFAULT_ALIAS = "champion"


def previous_alias(alias: str) -> str:
    return f"previous-{alias}"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------------------------
# the guard (pure)


@dataclass(frozen=True)
class Evaluation:
    """A model version's likelihood result at one step label (None where it was not evaluated)."""

    version: str
    label: str
    bits: float | None
    se: float | None
    test_sha: str | None

    @property
    def evaluated(self) -> bool:
        return self.bits is not None and self.se is not None and self.test_sha is not None

    def figure(self) -> str:
        if self.bits is None:
            return f"v{self.version}: not evaluated at {self.label}"
        se = f" ± {self.se:.4f} (s.e. across test examples)" if self.se is not None else ""
        return f"v{self.version}: {test_metric(self.label)} = {self.bits:.4f}{se}"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


def evaluation_from_run(version: str, label: str, metrics: dict[str, float], tags: dict[str, str]) -> Evaluation:
    se = metrics.get(test_se_metric(label), metrics.get(LEGACY_SE.format(label=label)))
    return Evaluation(version, label, metrics.get(test_metric(label)), se, tags.get(TAG_TEST_SHA))


def judge(candidate: Evaluation, champion: Evaluation | None, name: str) -> Verdict:
    """May `candidate` replace `champion` (None: the alias is unset)? Lower bits win, by more than
    sqrt(se_candidate^2 + se_champion^2), on the same test set."""
    eval_hint = f"evaluate it with `bfn eval models:/{name}/{candidate.version} --steps {_steps_arg(candidate.label)}`"
    if not candidate.evaluated:
        missing = "no test manifest digest" if candidate.bits is not None and candidate.test_sha is None else \
            f"no {test_metric(candidate.label)} / {test_se_metric(candidate.label)}"
        return Verdict(False, f"candidate v{candidate.version} has {missing}: {eval_hint}")
    if champion is None:
        return Verdict(True, f"no current holder; candidate {candidate.figure()}")
    if champion.version == candidate.version:
        return Verdict(False, f"v{candidate.version} already holds the alias")
    if not champion.evaluated:
        return Verdict(False, f"current {champion.figure()} (or has no test digest), so the candidate cannot be "
                              f"compared: evaluate it with `bfn eval models:/{name}/{champion.version} --steps "
                              f"{_steps_arg(champion.label)}`, or use --force --reason")
    if candidate.test_sha != champion.test_sha:
        return Verdict(False, f"candidate v{candidate.version} was evaluated on test set {candidate.test_sha[:12]} but "
                              f"champion v{champion.version} on {champion.test_sha[:12]}: evaluate both on the same "
                              "test manifest (`bfn eval ... --data URL`)")
    margin = math.sqrt(candidate.se ** 2 + champion.se ** 2)
    figures = f"candidate {candidate.figure()}, champion {champion.figure()}, required < {champion.bits - margin:.4f}"
    if candidate.bits + margin < champion.bits:
        return Verdict(True, f"better by {champion.bits - candidate.bits:.4f} > {margin:.4f} (combined s.e. across "
                             f"test examples): {figures}")
    return Verdict(False, f"not better by more than the combined standard error across test examples {margin:.4f}: "
                          f"{figures}")


def _steps_arg(label: str) -> str:
    return "inf" if label == "inf" else label.lstrip("n")


# ---------------------------------------------------------------------------------------------
# registry operations


def get_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise BfnError(f"unknown model {name}: no such registered model (list them with `bfn models list`)") from None
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise BfnError(f"unknown version {version} of model {name} (see `bfn models show {name}`)") from None


def alias_version(client, name: str, alias: str):
    """The model version an alias points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def evaluation_of(client, mv, label: str) -> Evaluation:
    if not mv.run_id:
        return Evaluation(str(mv.version), label, None, None, None)
    run = client.get_run(mv.run_id)
    return evaluation_from_run(str(mv.version), label, run.data.metrics, run.data.tags)


def register_run(run_id: str, name: str):
    """A new version of `name` (created if new) from a finished training run's model, linked to its
    run, LoggedModel and test digest."""
    from pipelines.model_store import register_version, run_and_model
    from pipelines.names import TAG_REGISTERED_RUN

    run, model_id = run_and_model(run_id)
    return register_version(name, run.info.run_id, model_id,
                            {TAG_REGISTERED_RUN: run.info.run_id, TAG_TEST_SHA: run.data.tags.get(TAG_TEST_SHA, "")})


UNGUARDED_BY = "unknown (outside bfn: the MLflow UI's alias editor or the API)"


def record_unguarded(client, name: str, lock_timeout: float = 60.0) -> list[dict[str, Any]]:
    """Aliases that point elsewhere than bfn's last recorded move of them were moved without the guard
    (MLflow's own alias editor does that): record each such move in the history as 'unguarded' and
    on the version, once. Checked again under the lock, so a promotion in flight is not mistaken
    for one. Returns the new entries."""
    if not _moved_outside(client, name):
        return []
    entries = []
    with RegistryLock(client, name, timeout=lock_timeout):
        for alias, (version, previous) in _moved_outside(client, name).items():
            entry = {"action": "unguarded", "alias": alias, "version": version, "previous": previous, "by": UNGUARDED_BY,
                     "at": now_iso(), "reason": "alias moved without the likelihood guard", "forced": True,
                     "guard": "not checked", "steps": ""}
            client.set_model_version_tag(name, version, "bfn.promotion_guard", f"unguarded: @{alias} set outside bfn")
            append_event(client, name, entry)
            entries.append(entry)
    return entries


def _moved_outside(client, name: str) -> dict[str, tuple[str, str | None]]:
    """alias -> (version it points to, version bfn last put there) where the two differ."""
    last = {}
    for entry in history(client, name):
        last[entry["alias"]] = entry["version"]
    aliases = client.get_registered_model(name).aliases or {}
    return {a: (str(v), last.get(a)) for a, v in aliases.items() if not a.startswith("previous-") and last.get(a) != str(v)}


@dataclass
class PromotionResult:
    name: str
    version: str
    alias: str
    previous: str | None
    verdict: Verdict
    forced: bool


def promote(client, name: str, version: str, *, alias: str = DEFAULT_ALIAS, label: str = "inf", force: bool = False,
            reason: str | None = None, lock_timeout: float = 60.0) -> PromotionResult:
    """Move `alias` to `version` if the guard allows it (or `force` with a reason); record it."""
    if force and not (reason and reason.strip()):
        raise BfnError("--force needs --reason TEXT: say why the guard is overridden (it is recorded)")
    if alias.startswith("previous-"):
        raise BfnError(f"alias {alias} is managed by bfn (it records the previous holder): promote to another alias")
    mv = get_version(client, name, version)
    version = str(mv.version)
    with RegistryLock(client, name, timeout=lock_timeout):
        current = alias_version(client, name, alias)  # re-read under the lock: the decision uses fresh state
        candidate = evaluation_of(client, mv, label)
        holder = evaluation_of(client, current, label) if current is not None else None
        verdict = judge(candidate, holder, name)
        if current is not None and str(current.version) == version:
            raise BfnError(f"v{version} of {name} is already @{alias}: nothing to do")
        if not verdict.ok and not force:
            raise BfnError(f"promotion of {name} v{version} to @{alias} refused: {verdict.reason} "
                           "(override with --force --reason TEXT)")
        previous = str(current.version) if current is not None else None
        if previous is not None:
            client.set_registered_model_alias(name, previous_alias(alias), previous)
        client.set_registered_model_alias(name, alias, version)
        entry = {"action": "promote", "alias": alias, "version": version, "previous": previous, "by": who(),
                 "at": now_iso(), "reason": reason or "guard passed", "forced": bool(force and not verdict.ok),
                 "guard": verdict.reason, "steps": label}
        for key, value in (("promoted_by", entry["by"]), ("promoted_at", entry["at"]), ("promotion_reason", entry["reason"]),
                           ("promotion_forced", str(entry["forced"]).lower()), ("promotion_guard", verdict.reason),
                           ("previous_" + alias.replace("-", "_"), previous or "")):
            client.set_model_version_tag(name, version, f"bfn.{key}", value[:5000])
        append_event(client, name, entry)
        _verify(client, name, alias, version)
    return PromotionResult(name, version, alias, previous, verdict, entry["forced"])


def rollback(client, name: str, *, alias: str = DEFAULT_ALIAS, reason: str | None = None,
             lock_timeout: float = 60.0) -> tuple[str, str]:
    """Move `alias` back to previous-`alias`; returns (from version, to version)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise BfnError(f"unknown model {name}: no such registered model (list them with `bfn models list`)") from None
    with RegistryLock(client, name, timeout=lock_timeout):
        current = alias_version(client, name, alias)
        prev = alias_version(client, name, previous_alias(alias))
        if current is None or prev is None:
            raise BfnError(f"model {name} has no @{previous_alias(alias)} to roll back to "
                           f"(@{alias} is {'v' + str(current.version) if current else 'unset'})")
        src, dst = str(current.version), str(prev.version)
        client.set_registered_model_alias(name, alias, dst)
        # The restored version's own predecessor becomes the next rollback target: repeated
        # rollbacks walk back through the history instead of toggling between two versions.
        before = prev.tags.get("bfn.previous_" + alias.replace("-", "_")) or ""
        if before and before != dst:
            client.set_registered_model_alias(name, previous_alias(alias), before)
        else:
            client.delete_registered_model_alias(name, previous_alias(alias))
        entry = {"action": "rollback", "alias": alias, "version": dst, "previous": src, "by": who(), "at": now_iso(),
                 "reason": reason or f"rollback from v{src}", "forced": False, "guard": "", "steps": ""}
        client.set_model_version_tag(name, dst, "bfn.rolled_back_at", entry["at"])
        client.set_model_version_tag(name, dst, "bfn.rolled_back_by", entry["by"])
        client.set_model_version_tag(name, dst, "bfn.rolled_back_from", src)
        append_event(client, name, entry)
        _verify(client, name, alias, dst)
    return src, dst


def _verify(client, name: str, alias: str, version: str) -> None:
    now = alias_version(client, name, alias)
    if now is None or str(now.version) != version:
        raise BfnError(f"@{alias} of {name} moved to v{getattr(now, 'version', None)} during the promotion of v{version}: "
                       "another process changed the registry without bfn's lock; check `bfn models show "
                       f"{name}`")
