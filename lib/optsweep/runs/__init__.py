"""Runs: what one run is (its spec and its key), its life (one status enum), and the store that keeps it.

    trainer  the trainer plug-in contract: the run spec, loading a trainer, its code identity
    store    the crash-proof run store (one JSON per run key), claims between drivers, checkpoint folders
    view     what the store holds, why a spec is not in it, and re-keying a store made by an older rule
"""

from .store import RunRecord, RunStatus, RunStore, run_key
from .trainer import DEFAULT_TRAINER, code_identity, make_run_spec

__all__ = ["DEFAULT_TRAINER", "RunRecord", "RunStatus", "RunStore", "code_identity", "make_run_spec", "run_key"]
