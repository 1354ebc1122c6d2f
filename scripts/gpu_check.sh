#!/usr/bin/env bash
# GPU check (SPEC 8): the training, inference and SimCLR benchmarks with and without mixed
# precision and XLA, then one short training of each model, in a few minutes on one GPU.
# Usage: bash scripts/gpu_check.sh [PYTHON] [OUT]   (defaults: .venv/bin/python, gpu_check)
# Writes OUT/benchmarks.jsonl (one JSON line per benchmark) and prints a markdown table.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-gpu_check}
SIZE=${GPU_CHECK_SIZE:-224}
BATCH=${GPU_CHECK_BATCH:-64}
mkdir -p "$OUT"
"$PY" -c "import tensorflow as tf; gpus = tf.config.list_physical_devices('GPU'); print('GPUs:', [tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus] or 'none (this will run on the CPU)')"

if [ ! -f "$OUT/split/split.csv" ]; then
    "$PY" data_tools/make_synthetic_breakhis.py --out "$OUT/tree" --patients-per-subtype 4 \
        --images-per-patient 8 --size 700 460 --seed 0 >/dev/null
    "$PY" data_tools/prepare_breakhis.py "$OUT/tree" --out "$OUT/split" --copy >/dev/null
fi

: > "$OUT/benchmarks.jsonl"
for bench in train infer simclr; do
    model=cnn; [ "$bench" = simclr ] && model=resnet18
    for flags in "" "--mixed-precision" "--jit-compile" "--mixed-precision --jit-compile"; do
        echo "== bench $bench --model $model $flags"
        # shellcheck disable=SC2086
        "$PY" -m bc_keras.bench "$bench" "$OUT/split" --model "$model" --image-size "$SIZE" \
            --batch-size "$BATCH" $flags | tail -n 1 \
            | "$PY" -c "import json, sys; d = json.loads(sys.stdin.read()); d.update(bench='$bench', flags='$flags'.strip() or 'float32'); print(json.dumps(d))" \
            | tee -a "$OUT/benchmarks.jsonl"
    done
done
"$PY" -m bc_keras.bench train "$OUT/split" --model resnet50 --image-size "$SIZE" --batch-size "$BATCH" \
    --mixed-precision | tail -n 1 | tee -a "$OUT/benchmarks.jsonl"

echo "== one short training of each model (mixed precision, XLA)"
common=(--data "$OUT/split" --image-size "$SIZE" --mixed-precision --jit-compile)
"$PY" train_cnn.py "${common[@]}" --epochs 2 --run-dir "$OUT/runs/cnn" --model-out "$OUT/models/cnn.h5"
for backbone in resnet50 vgg16 mobilenet; do
    "$PY" train_transfer.py "${common[@]}" --backbone "$backbone" --weights none --epochs 1 \
        --run-dir "$OUT/runs/$backbone" --model-out "$OUT/models/$backbone.h5"
done
"$PY" train_simclr.py pretrain "${common[@]}" --epochs 2 --batch-size 64 --encoder-init random \
    --run-dir "$OUT/runs/pretrain" --model-out "$OUT/models/encoder.h5"
"$PY" train_simclr.py finetune "${common[@]}" --epochs 1 --encoder "$OUT/models/encoder.h5" \
    --run-dir "$OUT/runs/finetune" --model-out "$OUT/models/simclr.h5"

"$PY" - "$OUT/benchmarks.jsonl" <<'PYTHON'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print("\n| benchmark | precision / XLA | result |\n|---|---|---|")
for row in rows:
    name, flags = row.pop("bench", "train resnet50"), row.pop("flags", "--mixed-precision")
    shown = ", ".join(f"{k} {v}" for k, v in row.items() if isinstance(v, (int, float)))
    print(f"| {name} | {flags} | {shown} |")
PYTHON
