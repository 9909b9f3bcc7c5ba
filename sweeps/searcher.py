"""The sweep's Optuna searcher: Ray Tune's OptunaSearch, with the study told the truth about trials.

Two things Ray's OptunaSearch (2.x) does not do, and why they matter here:

* It reports intermediate values keyed by Tune's `training_iteration` (the number of reports) and
  ends a trial that ASHA stopped as COMPLETE with its last value. optuna-dashboard then shows a
  trial stopped at step 100 as a finished trial next to those trained to the end, and its curve on
  a report-count axis. Here intermediate values are keyed by the training step, and a trial that
  ended before `max_steps` without an error is told to the study as PRUNED.
* Tune saves the searcher with its experiment state by pickling it, and Optuna's NSGA-II sampler
  holds a thread lock: `PicklableNSGAII` drops the lock on pickling and makes a new one on loading.
"""
from __future__ import annotations

import threading
from typing import Dict, Optional

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from pipelines.names import STEP


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II, picklable (its thread lock is made again on loading)."""

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_thread_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


class StepKeyedOptunaSearch(OptunaSearch):
    """OptunaSearch whose intermediate values are keyed by training step and whose early-stopped trials are PRUNED."""

    def __init__(self, *args, max_steps: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_steps = max_steps

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        if isinstance(self.metric, list) or trial_id in self._completed_trials or not result:
            return  # Optuna keeps no intermediate values for multi-objective studies
        if self.metric in result and STEP in result:
            trial = self._ot_trials[trial_id]
            step = int(result[STEP])
            if step not in trial.storage.get_trial(trial._trial_id).intermediate_values:
                trial.report(float(result[self.metric]), step)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        if trial_id not in self._completed_trials:
            self.on_trial_result(trial_id, result)  # Tune hands the last result only to on_trial_complete
        stopped_early = bool(result) and not error and result.get(STEP, 0) < self.max_steps
        if trial_id in self._completed_trials or not stopped_early:
            return super().on_trial_complete(trial_id, result, error)
        # PRUNED carries no final value: Optuna takes the last intermediate value as the trial's.
        self._ot_study.tell(self._ot_trials[trial_id], state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)


def make_sampler(kind: str, seed: int, trials: int):
    """The Optuna sampler named in a spec's search.sampler."""
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))
    if kind == "nsga2":
        return PicklableNSGAII(seed=seed, population_size=max(4, min(50, trials // 2)))
    return optuna.samplers.RandomSampler(seed=seed)
