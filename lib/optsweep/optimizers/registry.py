"""Finding optimizers by name, validating their hyperparameters, building them, and their identity.

The built-ins are the plug-ins declared in this package's own modules, found by looking rather than listed,
so that adding an optimizer's file changes no other file's code (and no other optimizer's run keys).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Iterable

from ..codehash import code_hash
from ..errors import ParamsError
from . import base
from .base import BATCH_SIZE, DECAY_KINDS, OPTIONAL_HPARAMS, BuildContext, OptimizerPlugin

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LambdaLR

_NOT_OPTIMIZERS = ("base", "parts", "registry")  # this package's modules that declare no optimizer


def _built_in_plugins() -> dict[str, OptimizerPlugin]:
    """Every plug-in that this package's optimizer modules declare, by name (the modules in name order)."""
    package = importlib.import_module(__package__)
    plugins: dict[str, OptimizerPlugin] = {}
    for found in pkgutil.iter_modules(package.__path__):
        if found.name in _NOT_OPTIMIZERS:
            continue
        module = importlib.import_module(f"{__package__}.{found.name}")
        for value in vars(module).values():
            if isinstance(value, OptimizerPlugin) and value.make.__module__ == module.__name__:
                plugins[value.name] = value
    return plugins


BUILT_IN: dict[str, OptimizerPlugin] = _built_in_plugins()


def _error(where: str, message: str) -> ParamsError:
    """A one-line ParamsError, prefixed with where the setting is (e.g. "optimizers.muon.grid") when known."""
    return ParamsError(f"{where}: {message}" if where else message)


def load_optimizer(name: str, where: str = "") -> OptimizerPlugin:
    """A built-in by name, or "module:function" declared with `@declare_optimizer` (one-line ParamsError)."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, colon, attribute = name.partition(":")
    if not colon:
        raise _error(where, f"unknown optimizer {name!r}; built in: {', '.join(BUILT_IN)}, or 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # any import failure is the user's setting
        raise _error(where, f"cannot import module {module_name!r} ({type(error).__name__}: {error})") from None
    plugin = getattr(module, attribute, None)
    if not isinstance(plugin, OptimizerPlugin):
        raise _error(where, f"{name!r} is not an optimizer declared with @optsweep.optimizers.declare_optimizer")
    return plugin


def check_hparams(name: str, values: dict[str, Any], where: str = "") -> None:
    """Every key is a hyperparameter of the optimizer and every value lies in its domain (one-line ParamsError).

    `batch_size` (OPTIONAL_HPARAMS) is a run setting that every optimizer accepts and ignores.
    Use it for grids too: `check_hparams(name, {key: value})` for each grid value.
    """
    plugin = load_optimizer(name, where)
    for key, value in values.items():
        if key in OPTIONAL_HPARAMS:
            problem = BATCH_SIZE.problem(value) if value is not None else None
            if problem:
                raise _error(where, f"{key}: {problem}")
            continue
        if key not in plugin.hparams:
            allowed = ", ".join(plugin.hparams)
            raise _error(where, f"optimizer {plugin.name!r} has no hyperparameter {key!r}; it has: {allowed}")
        problem = plugin.hparams[key].problem(value)
        if problem:
            raise _error(where, f"optimizer {plugin.name!r}, {key}: {problem}")


def resolve_hparams(name: str, values: dict[str, Any], where: str = "") -> dict[str, float | int]:
    """The optimizer's full hyperparameters: `values` checked, the rest at their defaults, integers as int;
    then `batch_size` when given."""
    check_hparams(name, values, where)
    declared = load_optimizer(name, where).hparams
    resolved = {key: values.get(key, hparam.default) for key, hparam in declared.items()}
    typed = {key: int(v) if declared[key].integer else float(v) for key, v in resolved.items()}
    return {**typed, **{key: int(values[key]) for key in OPTIONAL_HPARAMS if values.get(key) is not None}}


def build(
    name: str,
    model: torch.nn.Module,
    hparams: dict[str, Any],
    steps: int,
    decay_exclude: Iterable[str] = DECAY_KINDS,
    fused: bool = False,
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """The optimizer over `model` and the schedule its plug-in declares; call `schedule.step()` after every
    `optimizer.step()`, and `optim.clip_gradients(optim.clipped_parameters(optimizer, model), hparams["clip"])`
    before it."""
    from .parts import lr_schedule

    plugin = load_optimizer(name)
    resolved = resolve_hparams(name, hparams)
    optimizer = plugin.make(model, resolved, BuildContext(steps, tuple(decay_exclude), fused))
    schedule = plugin.schedule
    return optimizer, lr_schedule(
        optimizer, steps, resolved["warmup"], resolved["min_lr_ratio"], schedule.kind, schedule.decay_of(resolved)
    )


@functools.lru_cache(maxsize=None)
def optimizer_identity(name: str) -> dict[str, Any]:
    """What decides an optimizer's results besides its hyperparameters, for the run key (which holds those
    too): its name, the versions of the libraries it comes from and its code (`optimizer_code`)."""
    plugin = load_optimizer(name)
    return {
        "name": plugin.name,
        "libraries": {library: _version(library) for library in plugin.libraries},
        "code": optimizer_code(name),
    }


def optimizer_code(name: str) -> str:
    """The code identity (optsweep.codehash) of the module that defines the optimizer's build function and of
    `base`: not of the other optimizers' modules, so that editing or adding one re-keys no other's runs."""
    return code_hash([load_optimizer(name).make.__module__, base.__name__])


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
