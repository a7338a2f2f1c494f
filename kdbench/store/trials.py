"""A run's Optuna trial, closed as kdbench recorded the run: the one function that writes a trial's end.

kdbench's run rows are the record and Optuna's trial states follow them. :meth:`Claims.finish_run
<kdbench.store.claims.Claims.finish_run>` closes a run's trial right after the run's own transaction (and a
claim that retires a dead attempt fails that attempt's trial the same way); the sweep's repair after a crash
and an interrupted ask (a trial no run points to yet) call the same :func:`close_trial`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

__all__ = ["OPTUNA_STATES", "close_trial"]

log = logging.getLogger(__name__)

OPTUNA_STATES = {"complete": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "interrupted": "FAIL"}
"""kdbench's final run states and the Optuna ``TrialState`` each becomes."""

_ATTEMPTS = 3  # a storage error under load (a pool exhausted, a lock) is retried this many times in all
_BACKOFF_S = 0.2  # seconds before the second try, doubled before each later one


def close_trial(storage: BaseStorage, trial_id: int, state: str, reason: str | None = None,
                value: float | None = None) -> bool:
    """Finish an Optuna trial as kdbench recorded its run; a no-op when it is already finished.

    A storage error is retried (:data:`_ATTEMPTS` tries); if every try fails the run stays the record and the
    next sweep's repair closes the trial from it. Returns False in that case, True otherwise.
    """
    import optuna

    tstate = optuna.trial.TrialState[OPTUNA_STATES[state]]
    values = [value] if tstate == optuna.trial.TrialState.COMPLETE and value is not None else None
    for attempt in range(_ATTEMPTS):
        try:  # a finished trial refuses both writes (UpdateFinishedTrialError): no read first
            if reason and tstate == optuna.trial.TrialState.FAIL:
                storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, tstate, values)
            return True
        except (KeyError, optuna.exceptions.UpdateFinishedTrialError):  # gone with its study, or already closed
            return True
        except Exception as exc:  # StorageInternalError, OperationalError: the database under load
            if attempt + 1 == _ATTEMPTS:
                log.warning("Optuna trial %s stays open (%s); the next sweep closes it from its run", trial_id, exc)
                return False
            time.sleep(_BACKOFF_S * 2**attempt)
    return False
