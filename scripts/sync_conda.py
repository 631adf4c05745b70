"""Regenerate conda.yaml's pip section from requirements.lock (run after relocking)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# The MLflow Project environment (MLproject: conda_env). Generated from
# requirements.lock by scripts/sync_conda.py; tests/test_layout.py keeps them equal.
name: cnn-overfitting
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def main() -> None:
    pins = [
        line.strip()
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    body = "".join(f"      - {pin}\n" for pin in pins)
    (ROOT / "conda.yaml").write_text(HEADER + body)


if __name__ == "__main__":
    main()
