#!/usr/bin/env bash
# README command 1: install everything, then run the whole pipeline with DVC
# on the dataset params.yaml names (by default the embedded digits).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
source .venv/bin/activate
export PIPELINE_REPRO_ID="${PIPELINE_REPRO_ID:-quickstart-$(date -u +%Y%m%dT%H%M%SZ)}"
echo "==> dvc repro"
dvc repro
cat <<MSG

Done. Results:
  reports/report.html        one page: data checks, curves, verdicts, advice (open it in a browser)
  reports/evaluation.json    verdict and evidence per variant
  reports/validation.json    data checks; reports/data_docs/index.html for Great Expectations' view
  models/<variant>/          trained models and per-epoch histories

Compare the variants in MLflow:
  source .venv/bin/activate && mlflow ui --backend-store-uri sqlite:///mlflow.db
  then open http://127.0.0.1:5000/#/experiments/$(python -c 'from pipeline.config import load_config; import mlflow; print(mlflow.MlflowClient("sqlite:///mlflow.db").get_experiment_by_name(load_config().mlflow.experiment).experiment_id)')?workflowType=machine_learning
  (the training runs; each dvc repro is one parent run: expand it for its stage runs)
MSG
