#!/usr/bin/env bash
# The post-training table of docs/post-training.md, from scratch: one pre-training run (python train.py, the
# default model), then for each seed SFT, a second SFT round with hinted answers (the SFT model's own answers
# started with its question's last content word, the best rated kept: stage.hinted_samples), the reward model,
# PPO, DPO, GRPO and evaluate.py, every method from the second round's model. Prints each
# command's wall time, the SFT, reward-model and DPO figures, and evaluate.py's table as the mean ± half the
# spread of the seeds. Extra arguments for every finetune.py and evaluate.py run (say qa.topic_weight=0, the
# question-blind rater) come from the environment: POSTTRAIN_ARGS="qa.topic_weight=0" bash ...
#
#   bash scripts/posttrain_seeds.sh [OUT_DIR [SEED ...]]     (default: outputs/posttrain_seeds 1337 1338)
set -euo pipefail
read -r -a extra <<< "${POSTTRAIN_ARGS:-}"
out=${1:-outputs/posttrain_seeds}
seeds=("${@:2}")
[ ${#seeds[@]} -gt 0 ] || seeds=(1337 1338)
mkdir -p "$out"

timed() {  # timed NAME COMMAND...: run it, its output in $out/NAME.log; say how long it took
    local name=$1 start=$SECONDS
    shift
    if ! "$@" > "$out/$name.log" 2>&1; then
        tail -n 5 "$out/$name.log" >&2
        echo "$name failed: see $out/$name.log" >&2
        exit 1
    fi
    echo "$name: $((SECONDS - start)) s"
}

timed pretrain python train.py hydra.run.dir="$out/pretrain"
for seed in "${seeds[@]}"; do
    run=$out/seed$seed
    sft=$run/sft/checkpoints/sft.ckpt reward=$run/reward/checkpoints/reward.ckpt
    timed "sft_$seed" python finetune.py stage=sft init_from="$out/pretrain/checkpoints/best.ckpt" seed="$seed" \
        hydra.run.dir="$run/sft_plain" "${extra[@]}"
    timed "sft_hinted_$seed" python finetune.py stage=sft init_from="$run/sft_plain/checkpoints/sft.ckpt" \
        seed="$seed" stage.hinted_samples=2 trainer.max_steps=900 trainer.val_check_interval=300 \
        hydra.run.dir="$run/sft" "${extra[@]}"
    timed "reward_$seed" python finetune.py stage=reward init_from="$sft" seed="$seed" hydra.run.dir="$run/reward" \
        "${extra[@]}"
    timed "ppo_$seed" python finetune.py stage=ppo init_from="$sft" reward_model="$reward" seed="$seed" \
        hydra.run.dir="$run/ppo" "${extra[@]}"
    timed "dpo_$seed" python finetune.py stage=dpo init_from="$sft" seed="$seed" hydra.run.dir="$run/dpo" "${extra[@]}"
    timed "grpo_$seed" python finetune.py stage=grpo init_from="$sft" seed="$seed" hydra.run.dir="$run/grpo" \
        "${extra[@]}"
    timed "evaluate_$seed" python evaluate.py pretrained="$out/pretrain/checkpoints/best.ckpt" sft="$sft" \
        reward_model="$reward" ppo="$run/ppo/checkpoints/ppo.ckpt" dpo="$run/dpo/checkpoints/dpo.ckpt" \
        grpo="$run/grpo/checkpoints/grpo.ckpt" seed="$seed" hydra.run.dir="$run/evaluate" "${extra[@]}"
done

grep -h -o "best val loss [0-9.]*" "$out/pretrain.log" | tail -n 1
for seed in "${seeds[@]}"; do
    echo "seed $seed: $(grep -h -o "held-out answer loss.*" "$out/sft_$seed.log"); \
$(grep -h -o "[0-9]* of [0-9]* training questions get.*" "$out/sft_hinted_$seed.log"); \
$(grep -h -o "held-out answer loss.*" "$out/sft_hinted_$seed.log"); \
$(grep -h -o "held-out pairwise accuracy.*" "$out/reward_$seed.log"); \
$(grep -h -o "held-out DPO loss.*" "$out/dpo_$seed.log")"
done
python - "$out" "${seeds[@]}" <<'EOF'
"""evaluate.py's first table of each seed, as one table: mean ± half the spread where the seeds differ."""
import re
import sys
from pathlib import Path

out, seeds = Path(sys.argv[1]), sys.argv[2:]
tables = []
for seed in seeds:
    lines = (out / f"seed{seed}" / "evaluate" / "eval.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next(i for i in range(start, len(lines) + 1) if i == len(lines) or not lines[i].startswith("|"))
    rows = lines[start:end]
    tables.append([[cell.strip() for cell in row.strip("|").split("|")] for row in rows])
number = re.compile(r"^[+-]?\d+(\.\d+)?$")
for rows in zip(*tables):
    cells = []
    for values in zip(*rows):
        if len(set(values)) == 1 or not all(number.match(v) for v in values):
            cells.append(values[0])
            continue
        x = [float(v) for v in values]
        digits = len(values[0].split(".")[1]) if "." in values[0] else 0
        sign = "+" if values[0].startswith(("+", "-")) else ""
        cells.append(f"{sum(x) / len(x):{sign}.{digits}f} ± {(max(x) - min(x)) / 2:.{digits}f}")
    print("| " + " | ".join(cells) + " |")
EOF
