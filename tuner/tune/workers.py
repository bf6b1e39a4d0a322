"""Several processes on one study: who measures which point, and what a killed process left behind.

Workers share a study through its database (SQLite on one machine, PostgreSQL across machines). Two of them
can propose the same point at the same moment (a seeded grid starts at the same place in every worker; TPE
and random samplers repeat points), and a read-then-write check cannot keep them from both measuring it. So
a point is *claimed* before it is measured: one row per (study, point) in the table `tuner_claims`, whose
primary key makes the insert atomic in the database itself. The worker whose insert fails waits for the
holder's trial and reuses its measurement; if the holder died, it takes the claim over and measures.

A process killed mid-trial leaves its trial RUNNING. The storage's heartbeat fails it after its grace period;
a sweep that starts sooner fails the trials of this machine's dead processes itself ("interrupted"). To tell
whose a trial is, it is born with its worker (`rdb_storage`): a process killed between creating a trial and
running its objective would otherwise leave a RUNNING trial that names nobody, which no one could fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from datetime import datetime
from functools import cache

CLAIMS_TABLE = "tuner_claims"
POLL_S = 1.0  # how often a worker waiting on another's point looks again


def worker_id() -> str:
    """This process, as trials record it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


@cache
def _storage_class():
    import optuna

    class WorkerStorage(optuna.storages.RDBStorage):
        """RDBStorage whose new trials carry their "worker" from the transaction that creates them."""

        def _create_new_trial(self, study_id, template_trial=None):  # what Optuna's cached storage calls
            if template_trial is None:
                template_trial = optuna.trial.FrozenTrial(
                    number=0, state=optuna.trial.TrialState.RUNNING, value=None, datetime_start=datetime.now(),
                    datetime_complete=None, params={}, distributions={}, user_attrs={"worker": worker_id()},
                    system_attrs={}, intermediate_values={}, trial_id=0)
            return super()._create_new_trial(study_id, template_trial)

    return WorkerStorage


def rdb_storage(url: str, **kwargs):
    """An Optuna RDBStorage for `url` (RDBStorage's keywords) whose trials are born with their worker."""
    return _storage_class()(url, **kwargs)


def _alive_here(worker: str | None) -> bool | None:
    """Whether the process `worker` names is alive: None when it is not on this machine (or unnamed)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def fail_interrupted(study) -> list[int]:
    """FAIL the RUNNING trials whose process, on this machine, has ended; their numbers. Each gets the error
    "interrupted: ...", so the record says why, and its point counts as not measured."""
    import optuna

    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if _alive_here(worker) is False:
            try:
                study._storage.set_trial_user_attr(t._trial_id, "error", f"interrupted: its process ({worker}) "
                                                   "ended while it ran")
                study._storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):  # it finished, or another worker won
                continue
            failed.append(t.number)
    return failed


def _engine(study):
    """The SQLAlchemy engine under the study's storage, or None (in memory: one process, nothing to share)."""
    storage = study._storage
    return getattr(getattr(storage, "_backend", storage), "engine", None)


def _point(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


_MADE: set[str] = set()  # databases whose claims table this process has made (or found)


def _create_table(engine) -> None:
    from sqlalchemy import text

    if str(engine.url) in _MADE:
        return
    for attempt in range(5):  # workers starting together race to create it (PostgreSQL's catalog can refuse one)
        try:
            with engine.begin() as c:
                c.execute(text(f"CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} (study_id INTEGER NOT NULL, "
                               "point VARCHAR(40) NOT NULL, trial_number INTEGER NOT NULL, "
                               "PRIMARY KEY (study_id, point))"))
            _MADE.add(str(engine.url))
            return
        except Exception:  # noqa: BLE001 - IntegrityError / ProgrammingError of the race, per driver
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


def claim(study, trial, params: dict, wait=lambda: time.sleep(POLL_S)):
    """Claim `params` for `trial`. None: this trial measures it. Otherwise the FrozenTrial, COMPLETE, of the
    worker that measured it, after waiting for that worker to finish (`wait()` between looks)."""
    import optuna
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = _engine(study)
    if engine is None:
        return None
    _create_table(engine)
    key = {"s": study._study_id, "p": _point(params), "n": trial.number}
    while True:
        try:
            with engine.begin() as c:
                c.execute(text(f"INSERT INTO {CLAIMS_TABLE} (study_id, point, trial_number) VALUES (:s, :p, :n)"),
                          key)
            return None
        except IntegrityError:
            pass
        with engine.begin() as c:
            row = c.execute(text(f"SELECT trial_number FROM {CLAIMS_TABLE} WHERE study_id = :s AND point = :p"),
                            key).first()
        if row is None:  # released between the insert and the read
            continue
        holder = row[0]
        if holder == trial.number:
            return None
        t = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, holder))
        if t.state == optuna.trial.TrialState.COMPLETE:
            return t
        if t.state == optuna.trial.TrialState.RUNNING and _alive_here(t.user_attrs.get("worker")) is not False:
            wait()  # in flight elsewhere: its measurement is coming
            continue
        # the holder died (FAIL, or RUNNING in a dead process of this machine): take its claim over
        if t.state == optuna.trial.TrialState.RUNNING:
            fail_interrupted(study)
        with engine.begin() as c:
            took = c.execute(text(f"UPDATE {CLAIMS_TABLE} SET trial_number = :n WHERE study_id = :s AND point = :p "
                                  "AND trial_number = :old"), {**key, "old": holder}).rowcount
        if took == 1:
            return None


class CtrlC:
    """Ctrl-C during a sweep, let in only where it is safe. Inside a measurement (or a wait for another worker's) it
    interrupts at once; during Optuna's own storage writes it is held until the next safe point, because an
    interrupt inside a database commit breaks Optuna's trial bookkeeping (its "Should not reach" assertion, and
    a traceback instead of the one line). Only the main thread can take signals: elsewhere this does nothing."""

    def __init__(self):
        self.pending = self.safe = False
        self.previous = None

    def __enter__(self) -> CtrlC:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame) -> None:
        if self.safe:
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        """A safe point: a Ctrl-C held back interrupts here."""
        if self.pending:
            raise KeyboardInterrupt

    def run(self, fn, *args):
        """fn(*args) where Ctrl-C interrupts at once."""
        self.check()
        self.safe = True
        try:
            return fn(*args)
        finally:
            self.safe = False
