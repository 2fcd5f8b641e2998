"""A whole run, as ``recipes/distill.py`` makes it: arguments (:mod:`~hf_distill.run.config`), checks before
starting (:mod:`~hf_distill.run.preflight`), building the trainer (:mod:`~hf_distill.run.build`), the run's
record for exact resume (:mod:`~hf_distill.run.run_record`), the baseline beside it
(:mod:`~hf_distill.run.baseline`) and the lifecycle that ties them (:mod:`~hf_distill.run.lifecycle`).

This layer is above the training core; the core never imports it.
"""


def __getattr__(name: str):
    # ``hf_distill.run`` was one module before the package was grouped: ``distill`` and its other names still
    # resolve (the others with a warning)
    import importlib

    module = importlib.import_module(".lifecycle", __name__)
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name != "distill":
        from .._moved import warn_moved

        warn_moved(f"{__name__}.{name}", f"{module.__name__}.{name}")
    return getattr(module, name)
