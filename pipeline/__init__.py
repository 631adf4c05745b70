"""Overfitting diagnosis for CNN image classifiers: a DVC + MLflow pipeline."""

__version__ = "0.1.0"
