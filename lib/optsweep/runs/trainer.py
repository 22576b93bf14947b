"""The trainer plug-in contract: build a run spec, load the trainer named in params, know its code identity.

A trainer is any callable `f(spec: dict) -> dict` named as "module:function". The spec is JSON-serialisable:

    {"scale":          {name, width, depth, heads, ffn_width, seq_len, batch_size, vocab_size,
                        n_params, steps, tokens, flops_per_token},
     "optimizer":      {name, libraries, code}: which optimizer plug-in (optsweep.optimizers), the versions of
                       the libraries it comes from and the code identity of its module,
     "hparams":        every hyperparameter the optimizer declares (AdamW: lr, min_lr_ratio, warmup, beta1,
                       beta2, weight_decay, eps, clip), defaults filled in[, batch_size],
     "seed":           int, the initialisation seed,
     "batch_seed":     int, the seed of the batch order (the data seed; noise re-runs may vary it),
     "data":           identity of the prepared token shards (dir, hash, vocab_size, tokenizer) or None,
     "train":          the study's train settings (device, precision, compile, eval, divergence, micro-batch
                       of this scale, checkpoint interval, ...),
     "checkpoint_dir": a folder of the run store that belongs to this run alone, or None}

and the result holds at least `loss`, the final held-out loss at the full budget (non-finite or missing
means diverged; `"status": "diverged"` says so explicitly). A trainer that raises has *failed*: the run is
missing, not diverged, and is trained again by the next sweep.

Checkpoints: a long-running trainer may save its state in `checkpoint_dir` and, when it finds a state
there on a later call with the same spec, resume from it instead of starting over (a worker that died, a
node that was lost). Write atomically (a temp file and `os.replace`). The run store deletes the folder
once the run's result is stored.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import math
from typing import Any, Callable

from ..codehash import code_hash
from ..optimizers import optimizer_identity
from ..params.sections import Scale
from ..params.settings import ParamsError, StudyParams

DEFAULT_TRAINER = "optsweep.train:train"
Trainer = Callable[[dict[str, Any]], dict[str, Any]]

# The modules whose code decides the default trainer's result, besides its optimizer's own module (which the
# optimizer's identity in the spec covers, so that editing one optimizer re-keys only its runs). How the data
# was prepared (data.py) is covered by the data hash in the spec instead.
_DEFAULT_TRAINER_MODULES = (
    "optsweep.train.model", "optsweep.train.loss", "optsweep.train.divergence", "optsweep.train.loop",
    "optsweep.data.batches", "optsweep.optimizers.parts", "optsweep.optimizers.base", "optsweep.optimizers.registry",
)


def load_trainer(name: str) -> Trainer:
    """Import "module:function"; a failure is a one-line `ParamsError` naming `study.trainer`."""
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's trainer setting
        raise ParamsError(f"study.trainer: cannot import module {module_name!r} ({type(error).__name__}: {error})")
    trainer = getattr(module, function_name, None)
    if not callable(trainer):
        raise ParamsError(f"study.trainer: module {module_name!r} has no callable {function_name!r}")
    return trainer


def code_identity(name: str) -> str:
    """Hash of the code that decides a trainer's results, so a code change never reuses stale runs.

    Only code counts (optsweep.codehash): comments, docstrings, formatting, import lines and where the modules
    live do not, so editing those or moving a module keeps every stored run. The default trainer's
    `TRAINER_VERSION` (train.py) is part of the code, so bumping it retrains everything. A trainer's module
    that cannot be found is a one-line `ParamsError` naming `study.trainer`.
    """
    modules = _DEFAULT_TRAINER_MODULES if name == DEFAULT_TRAINER else (name.partition(":")[0],)
    try:
        return code_hash(modules)
    except LookupError as error:
        raise ParamsError(f"study.trainer: {error}") from None


@dataclasses.dataclass(frozen=True)
class RunSpecs:
    """The run specs of one scale, resolved once from params: everything a spec holds but a run's hparams and
    seeds (a search asks for hundreds of specs; the optimizer's identity is hashed once, not per run)."""

    scale_name: str
    scale: Scale
    vocab_size: int
    optimizer: dict[str, Any]  # `optimizer_identity`
    train: dict[str, Any]  # the study's train settings, with this scale's micro-batch
    data: dict[str, Any] | None
    seed: int  # the study's seed: the initialisation
    batch_seed: int  # the data seed: the batch order

    def scale_entry(self, hparams: dict[str, Any]) -> dict[str, Any]:
        """The scale as a spec of `hparams` carries it (a `batch_size` hyperparameter changes steps and tokens)."""
        return {"name": self.scale_name, **self.scale.derived(self.vocab_size, hparams.get("batch_size"))}

    def spec(self, hparams: dict[str, Any], seed: int | None = None, batch_seed: int | None = None) -> dict[str, Any]:
        """The spec of one run; each gets its own copies of the nested settings (a trainer may edit its spec)."""
        return {
            "scale": self.scale_entry(hparams),
            "optimizer": copy.deepcopy(self.optimizer),
            "hparams": dict(hparams),
            "seed": self.seed if seed is None else seed,
            "batch_seed": self.batch_seed if batch_seed is None else batch_seed,
            "data": self.data,
            "train": copy.deepcopy(self.train),
            "checkpoint_dir": None,
        }


def run_specs(params: StudyParams, scale_name: str, data: dict[str, Any] | None) -> RunSpecs:
    """The run specs of one scale of a study, on the prepared `data` (None: a trainer that reads none)."""
    scale = params.scale(scale_name)
    train = params.study.train.model_dump()
    train["micro_batch_size"] = scale.micro_batch_size or train["micro_batch_size"]
    return RunSpecs(
        scale_name=scale_name, scale=scale,
        vocab_size=data["vocab_size"] if data else params.study.tokenizer.vocab_size,
        optimizer=optimizer_identity(params.study.optimizer), train=train, data=data,
        seed=params.study.seed, batch_seed=params.study.data.seed,
    )


def make_run_spec(
    params: StudyParams,
    scale_name: str,
    hparams: dict[str, Any],
    data: dict[str, Any] | None,
    seed: int | None = None,
    batch_seed: int | None = None,
) -> dict[str, Any]:
    """The spec for one run: `hparams` are effective values (lr already moved by the transfer rule).

    `seed` (default the study's) fixes the initialisation, `batch_seed` (default the data seed) the batch
    order: configs compared on one (seed, batch_seed) share both (common random numbers)."""
    return run_specs(params, scale_name, data).spec(hparams, seed, batch_seed)


def warmup_fits(warmup: float, steps: float) -> bool:
    """Whether a run of `steps` steps can train with this warmup: the warmup must end before the run does."""
    return warmup < steps


def invalid_reason(spec: dict[str, Any]) -> str | None:
    """Why a spec cannot be trained (e.g. warmup beyond the run), or None when it can."""
    steps = spec["scale"]["steps"]
    warmup = spec["hparams"]["warmup"]
    if steps < 1:
        return f"batch_size {spec['scale']['batch_size']} leaves no full step in the token budget"
    if not warmup_fits(warmup, steps):
        return f"warmup ({warmup}) must be shorter than the run ({steps} steps)"
    return None


def is_diverged(result: dict[str, Any]) -> bool:
    loss = result.get("loss")
    return result.get("status") == "diverged" or not isinstance(loss, (int, float)) or not math.isfinite(loss)
