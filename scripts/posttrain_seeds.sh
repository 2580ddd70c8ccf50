#!/usr/bin/env bash
# The post-training table of docs/post-training.md, from scratch: one pre-training run (python train.py: the
# default model, or PRETRAIN_ARGS's), then for each seed SFT, hinted SFT rounds, each from the round before (the
# model's own answers started with its question's last content word, the best of N rated kept:
# stage.hinted_samples=N), the reward model, PPO, DPO, GRPO and evaluate.py, every method from the last round's
# model. The seeds run side by side, each with an equal share of the CPU's cores as torch threads (unless
# OMP_NUM_THREADS says otherwise). Prints each command's wall time, the SFT, reward-model and DPO figures, and
# evaluate.py's table as the mean ± half the spread of the seeds. Settings from the environment:
#   PRETRAIN_ARGS   extra arguments for train.py, say a larger model: "model.n_layer=6 model.n_head=6 model.n_embd=192"
#   HINTED_ROUNDS   the hinted SFT rounds, one N:STEPS each (best of N, STEPS training steps); default "2:900",
#                   say "2:900 2:300 4:600" for three
#   POSTTRAIN_ARGS  extra arguments for every finetune.py and evaluate.py run, say the question-blind rater:
#                   POSTTRAIN_ARGS="qa.topic_weight=0" bash scripts/posttrain_seeds.sh
#
#   bash scripts/posttrain_seeds.sh [OUT_DIR [SEED ...]]     (default: outputs/posttrain_seeds 1337 1338)
set -euo pipefail
read -r -a pretrain_args <<< "${PRETRAIN_ARGS:-}"
read -r -a extra <<< "${POSTTRAIN_ARGS:-}"
read -r -a rounds <<< "${HINTED_ROUNDS:-2:900}"
out=${1:-outputs/posttrain_seeds}
seeds=("${@:2}")
[ ${#seeds[@]} -gt 0 ] || seeds=(1337 1338)
for spec in "${rounds[@]}"; do
    [[ $spec =~ ^[1-9][0-9]*:[1-9][0-9]*$ ]] || {
        echo "HINTED_ROUNDS must be rounds of N:STEPS (best of N, STEPS steps), say \"2:900 2:300\"; got '$spec'" >&2
        exit 2
    }
done
[ ${#rounds[@]} -gt 0 ] || { echo "HINTED_ROUNDS must name at least one round, say \"2:900\"" >&2; exit 2; }
mkdir -p "$out"
started=$SECONDS

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

run_seed() {  # every stage for one seed, one after another
    local seed=$1 run=$out/seed$1 round from dir samples steps
    timed "sft_$seed" python finetune.py stage=sft init_from="$out/pretrain/checkpoints/best.ckpt" seed="$seed" \
        hydra.run.dir="$run/sft_plain" "${extra[@]}"
    from=$run/sft_plain/checkpoints/sft.ckpt
    for ((round = 1; round <= ${#rounds[@]}; round++)); do
        samples=${rounds[round - 1]%:*} steps=${rounds[round - 1]#*:}
        dir=$run/sft_round$round
        [ "$round" -lt ${#rounds[@]} ] || dir=$run/sft  # the last round's model is every method's SFT model
        timed "sft_hinted${round}_$seed" python finetune.py stage=sft init_from="$from" seed="$seed" \
            stage.hinted_samples="$samples" trainer.max_steps="$steps" trainer.val_check_interval=300 \
            hydra.run.dir="$dir" "${extra[@]}"
        from=$dir/checkpoints/sft.ckpt
    done
    local sft=$from reward=$run/reward/checkpoints/reward.ckpt
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
}

timed pretrain python train.py hydra.run.dir="$out/pretrain" "${pretrain_args[@]}"
cores=$(python -c "import os; print(os.cpu_count() or 1)")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / ${#seeds[@]} > 0 ? cores / ${#seeds[@]} : 1 ))}
pids=()
for seed in "${seeds[@]}"; do
    run_seed "$seed" > "$out/seed$seed.out" 2>&1 &
    pids+=($!)
done
failed=0
for i in "${!seeds[@]}"; do
    if wait "${pids[$i]}"; then
        cat "$out/seed${seeds[$i]}.out"
    else
        cat "$out/seed${seeds[$i]}.out" >&2
        failed=1
    fi
done
[ $failed -eq 0 ] || exit 1
echo "all seeds, $OMP_NUM_THREADS torch threads each, side by side; the whole pipeline: $((SECONDS - started)) s"

grep -h -o "best val loss [0-9.]*" "$out/pretrain.log" | tail -n 1
for seed in "${seeds[@]}"; do
    echo "seed $seed: $(grep -h -o "held-out answer loss.*" "$out/sft_$seed.log"); \
$(grep -h -o "[0-9]* of [0-9]* training questions get.*" "$out/sft_hinted${#rounds[@]}_$seed.log"); \
$(grep -h -o "held-out answer loss.*" "$out/sft_hinted${#rounds[@]}_$seed.log"); \
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
