"""Overfitting diagnosis for CNN image classifiers: a DVC + MLflow pipeline.

The public API, for a run you trained yourself (pipeline.api):

    from pipeline import diagnose
    diagnose(history, n_train=len(x_train), n_val=len(x_val))

and `pipeline.keras.OverfittingMonitor`, a Keras callback that does the same
inside your own `model.fit`.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["diagnose"]


def __getattr__(name: str) -> Any:
    # Lazy: every pipeline stage imports this package, and none of them needs the
    # API's imports (pandas, the diagnosis modules) just to start.
    if name == "diagnose":
        from pipeline.api import diagnose

        return diagnose
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
