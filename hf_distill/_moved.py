"""Module paths from before the package was grouped into data/, training/, run/ and methods/ (release 0.1.0.dev0):
importing an old path still works and warns once, naming the new one. Remove after one release."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module -> new module (``hf_distill.data`` and ``hf_distill.run`` became packages: their old names are handled
#: by the packages' ``__getattr__``)
MOVED = {
    "hf_distill.losses": "hf_distill.methods",
    "hf_distill.losses.stages": "hf_distill.methods.init_stage_then_ce",
    "hf_distill.transforms": "hf_distill.data.transforms",
    "hf_distill.labels": "hf_distill.data.labels",
    "hf_distill.trainer": "hf_distill.training.trainer",
    "hf_distill.distillation_model": "hf_distill.training.distillation_model",
    "hf_distill.ensemble": "hf_distill.training.ensemble",
    "hf_distill.mutual": "hf_distill.training.mutual",
    "hf_distill.init_stage": "hf_distill.training.init_stage",
    "hf_distill.non_finite": "hf_distill.training.non_finite",
    "hf_distill.schedule": "hf_distill.training.schedule",
    "hf_distill.metrics": "hf_distill.training.metrics",
    "hf_distill.checkpoints": "hf_distill.training.checkpoints",
    "hf_distill.outputs": "hf_distill.training.outputs",
    "hf_distill.processes": "hf_distill.training.process_group",
    "hf_distill.teacher_cache": "hf_distill.training.teacher_cache",
    "hf_distill.config": "hf_distill.run.config",
    "hf_distill.cli": "hf_distill.console",
    "hf_distill.baseline": "hf_distill.run.baseline",
    "hf_distill.pipeline": "hf_distill.run.build",
    "hf_distill.run_record": "hf_distill.run.run_record",
    "hf_distill.guards": "hf_distill.run.preflight",
    "hf_distill.threads": "hf_distill.run.threads",
    "hf_distill.method_help": "hf_distill.run.method_help",
    "hf_distill.hub.cli": "hf_distill.hub.recipe_args",
    "hf_distill.hub.loading": "hf_distill.hub.classifier",
    "hf_distill.transfer.data": "hf_distill.transfer.transfer_data",
}


def new_name(old: str) -> str | None:
    """The current name of a module that moved, or None. ``hf_distill.losses.X`` is ``hf_distill.methods.X``."""
    if old in MOVED:
        return MOVED[old]
    if old.startswith("hf_distill.losses."):
        return "hf_distill.methods." + old.removeprefix("hf_distill.losses.")
    return None


def warn_moved(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warn_moved(spec.name, self.new)
        return importlib.import_module(self.new)  # the old name becomes an alias of the same module object

    def exec_module(self, module) -> None:
        pass


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old module names of :data:`MOVED` (installed on ``sys.meta_path`` by ``import hf_distill``)."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedLoader(new))


def install() -> None:
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
