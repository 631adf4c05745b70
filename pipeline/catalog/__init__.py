"""The files stages hand each other: one typed reader and one writer per file.

A small data catalog in the spirit of Kedro's: no stage opens another stage's
output with `json.loads` or `pd.read_csv` itself. One module per producing
stage, so a stage's DVC deps hold only the readers it uses:

- catalog.validation: reports/validation.json, reports/validation_flags.json
- catalog.training: models/<variant>/ (model.keras, history.csv, metrics.json,
  run.json, seeds.json) and models/learning_curve/<fraction>/
- catalog.evaluation: reports/evaluation.json

Every reader has one policy (catalog.jsonfile.read_json): a missing file
raises `StageError` naming the stage to rerun (or gives None where the file is
optional), and an unreadable one always raises `StageError`. Writers are
atomic (pipeline.io).
"""
