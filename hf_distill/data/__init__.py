"""Data: loading a user's image dataset (``datasets``), each model's own preprocessing, and the label spaces.

- :mod:`~hf_distill.data.datasets`: loading, splits, columns, the seeded dataset the trainer reads;
- :mod:`~hf_distill.data.transforms`: each model's train and eval transforms, seeded per (seed, epoch, row);
- :mod:`~hf_distill.data.labels`: the teacher's, the student's and the dataset's label spaces compared.
"""


def __getattr__(name: str):
    # ``hf_distill.data`` was one module before the package was grouped: its names still resolve, with a warning
    import importlib

    from .._moved import warn_moved

    module = importlib.import_module(".datasets", __name__)
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warn_moved(f"{__name__}.{name}", f"{module.__name__}.{name}")
    return getattr(module, name)
