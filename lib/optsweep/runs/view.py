"""`optsweep store`: what the run store holds, why a spec is not in it, and re-keying a store whose keys an older
identity rule made. (Retrying failed runs trains: optsweep.search.retry.)"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Iterator

from ..optimizers import optimizer_code
from ..params.settings import ParamsError, StudyParams
from .store import LAYOUT_SETTINGS, RunRecord, RunStatus, RunStore, run_key
from .trainer import code_identity, make_run_spec

IN_PROGRESS = "in_progress"


@dataclasses.dataclass(frozen=True)
class StoreRow:
    """One line of `optsweep store list`."""

    key: str
    status: str  # a RunStatus value, or "in_progress" for a checkpoint without a result
    scale: str
    loss: float | None
    detail: str  # hyperparameters, the checkpoint step, or the last line of the error

    def line(self) -> str:
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        return f"{self.key}  {self.status:<11} {self.scale:<12} {loss:>8}  {self.detail}"


def _hparams_text(spec: dict[str, Any]) -> str:
    return " ".join(f"{h}={v:g}" for h, v in spec.get("hparams", {}).items())


def rows(store: RunStore) -> Iterator[StoreRow]:
    """Every record, then every run in progress (a checkpoint without a result) with its step."""
    for record in store:
        detail = _hparams_text(record.spec)
        if record.status == RunStatus.FAILED and record.error:
            detail += f"  [{record.error.strip().splitlines()[-1]}]"
        yield StoreRow(record.key, record.status.value, record.spec["scale"].get("name", "?"), record.loss, detail)
    for key in store.in_progress():
        progress = store.checkpoint_dir(key) / "progress.json"
        step = json.loads(progress.read_text())["step"] if progress.is_file() else "?"
        yield StoreRow(key, IN_PROGRESS, "?", None, f"checkpoint at step {step}")


def _identity_parts(spec: dict[str, Any], trainer: str, trainer_code: str) -> dict[str, Any]:
    """The parts of a run's identity, as `run_key` hashes them (layout settings left out)."""
    train = {k: v for k, v in (spec.get("train") or {}).items() if k not in LAYOUT_SETTINGS}
    scale = {k: v for k, v in spec["scale"].items() if k != "name"}
    data = {k: v for k, v in (spec.get("data") or {}).items() if k != "dir"}
    return {"trainer": trainer, "trainer_code": trainer_code, "optimizer": spec.get("optimizer"), "scale": scale,
            "hparams": spec["hparams"], "seed": spec.get("seed"), "batch_seed": spec.get("batch_seed"),
            "data": data, "train": train}


def _differences(wanted: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """Which identity parts differ, down to the changed keys of the dict-valued ones."""
    found = []
    for part, value in wanted.items():
        other = stored.get(part)
        if value == other:
            continue
        if isinstance(value, dict) and isinstance(other, dict):
            keys = sorted(k for k in value.keys() | other.keys() if value.get(k) != other.get(k))
            found += [f"{part}.{k}: {other.get(k)!r} stored, {value.get(k)!r} now" for k in keys]
        else:
            found.append(f"{part}: {other!r} stored, {value!r} now")
    return found


def explain_missing(params: StudyParams, scale_name: str, hparams: dict[str, Any],
                    data: dict[str, Any] | None, store: RunStore) -> str:
    """Why the run of `hparams` at `scale_name` is (or is not) in the store, against the nearest stored run."""
    trainer = params.study.trainer
    spec = make_run_spec(params, scale_name, hparams, data)
    code = code_identity(trainer)
    key = run_key(spec, trainer, code)
    record = store.get(key)
    if record is not None:
        verdict = "stored as a result" if record.is_result else "stored as failed: the next sweep trains it again"
        return f"{key}: {verdict} ({record.status.value})"
    wanted = _identity_parts(spec, trainer, code)
    nearest: tuple[int, RunRecord, list[str]] | None = None
    for stored in store:
        differences = _differences(wanted, _identity_parts(stored.spec, stored.trainer, stored.trainer_code))
        if nearest is None or len(differences) < nearest[0]:
            nearest = (len(differences), stored, differences)
    if nearest is None:
        return f"{key}: not stored; the store {store.root} holds no runs"
    _, stored, differences = nearest
    return f"{key}: not stored; the nearest stored run {stored.key} differs in:\n  " + "\n  ".join(differences)


def failed_runs_to_retry(params: StudyParams, store: RunStore) -> tuple[list[RunRecord], list[RunRecord]]:
    """Failed runs of this study's trainer: those its current code can retry, and stale ones (older code)."""
    trainer = params.study.trainer
    code = code_identity(trainer)
    failed = [r for r in store if r.status == RunStatus.FAILED and r.trainer == trainer]
    return [r for r in failed if r.trainer_code == code], [r for r in failed if r.trainer_code != code]


@dataclasses.dataclass(frozen=True)
class Rekeyed:
    """What `rekey` did (or, in a dry run, would do): counts, and why each skipped record was left alone."""

    moved: list[str]  # old keys whose records now live under the current rule's key
    unchanged: list[str]
    skipped: dict[str, str]  # key -> reason

    def line(self, dry_run: bool) -> str:
        verb = "would move" if dry_run else "moved"
        return f"{verb} {len(self.moved)}, unchanged {len(self.unchanged)}, skipped {len(self.skipped)}"


def current_identity(record: RunRecord, trainer_code: Callable[[str], str] = code_identity,
                     optimizer_code: Callable[[str], str] = optimizer_code) -> tuple[dict[str, Any], str]:
    """The record's spec with its optimizer's code identity as today's code gives it, and its trainer's.

    Only the code hashes change: the libraries' versions stay as stored, since re-keying asserts that the code
    is equivalent, not that the libraries are. Raises ParamsError when the trainer or optimizer is gone.
    """
    stored = record.spec.get("optimizer")
    if not isinstance(stored, dict) or "name" not in stored:
        raise ParamsError("its spec names no optimizer")
    optimizer = {**stored, "code": optimizer_code(stored["name"])}
    return {**record.spec, "optimizer": optimizer}, trainer_code(record.trainer)


def rekey(store: RunStore, dry_run: bool = False) -> Rekeyed:
    """Move every stored result under the key the current identity rule gives it.

    This asserts that the stored runs were made by code equivalent to today's (a refactor that moved code,
    not one that changed what it computes). Each move writes the new record, then removes the old one: a kill
    in between leaves a duplicate that the next call removes, never a loss; a second call moves nothing.
    Failed runs are not results: they are skipped and trained anew by the next sweep.
    """
    # Memoised for this call: a store holds hundreds of runs of a few trainers and optimizers.
    codes = {"trainer_code": functools.cache(code_identity), "optimizer_code": functools.cache(optimizer_code)}
    moved, unchanged, skipped = [], [], {}
    for record in list(store):
        if not record.is_result:
            skipped[record.key] = f"{record.status.value}: not a result, the next sweep trains it anew"
            continue
        try:
            spec, trainer_code = current_identity(record, **codes)
        except ParamsError as error:
            skipped[record.key] = f"no current identity ({error})"
            continue
        key = run_key(spec, record.trainer, trainer_code)
        if key == record.key:
            unchanged.append(record.key)
            continue
        moved.append(record.key)
        if not dry_run:
            if store.get_result(key) is None:  # a result already there (an earlier, killed rekey) is kept
                store.put(key, dataclasses.replace(record, key=key, spec=spec, trainer_code=trainer_code))
            store.delete(record.key)
    return Rekeyed(moved, unchanged, skipped)
