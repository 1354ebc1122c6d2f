#!/usr/bin/env bash
# The demo behind `make demo`: synthetic BreaKHis-shaped data -> patient split -> stats and
# leakage audit -> baseline CNN (small images, few epochs) -> metrics, figures, .h5 -> predict.
# The synthetic images only show that the machinery works; they never stand in for real results.
set -euo pipefail
PY=${1:-.venv/bin/python}
DEMO=${2:-demo}

rm -rf "$DEMO"
mkdir -p "$DEMO"
step() { printf '\n==> %s\n' "$*"; }

step "1/6 synthetic BreaKHis_v1 tree (8 subtypes x 4 patients x 4 magnifications x 6 images)"
"$PY" data_tools/make_synthetic_breakhis.py --out "$DEMO/synthetic" \
    --patients-per-subtype 4 --images-per-patient 6 --size 175 115 --seed 0

step "2/6 patient-disjoint 70/15/15 split"
"$PY" data_tools/prepare_breakhis.py "$DEMO/synthetic" --out "$DEMO/split" --split patient --seed 42 >/dev/null
echo "prepared $DEMO/split (split.csv lists every image)"

step "3/6 distribution per split"
"$PY" data_tools/dataset_stats.py "$DEMO/split"

step "4/6 leakage audit"
"$PY" data_tools/audit_split.py "$DEMO/split"

step "5/6 baseline CNN at 64 px (the report's recipe; BatchNorm momentum 0.9 for this small set)"
"$PY" train_cnn.py --data "$DEMO/split" --image-size 64 --batch-size 16 --epochs 20 \
    --bn-momentum 0.9 --run-dir "$DEMO/runs/cnn" --model-out models/cnn_model_breast_cancer.h5

step "6/6 inference with the saved model on the test images"
"$PY" predict.py models/cnn_model_breast_cancer.h5 "$DEMO/split/test" --out "$DEMO/predictions_test.csv"

cat <<DONE

Demo finished.
  model:       models/cnn_model_breast_cancer.h5
  metrics:     $DEMO/runs/cnn/metrics.json (and predictions.csv, history.csv, config.json)
  figures:     $DEMO/runs/cnn/*.png
  predictions: $DEMO/predictions_test.csv and $DEMO/predictions_test_patients.csv
DONE
