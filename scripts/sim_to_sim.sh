#!/usr/bin/env bash
# The sim-to-sim study (docs/learning.md, "Sim-to-sim"): a perturbed sim stands in for a real
# robot; a policy trained on the nominal sim is evaluated there, then one trained on the
# parameters system identification fitted from the "robot's" logs, one trained with domain
# randomization, one on the fit with the objects (which the logs do not identify) randomized,
# and one trained on the "robot" itself (the upper bound).
#   scripts/sim_to_sim.sh                  # everything, about an hour on 2 cores
#   OUT=runs/s2s STEPS=12000 scripts/sim_to_sim.sh
# Each stage leaves its output in $OUT and is skipped when that output is there, so a run that
# was stopped goes on where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST} MUJOCO_GL=${MUJOCO_GL:-egl}
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$((RANDOM % 100 + 100))}
export AMENT_PREFIX_PATH=$PWD/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}   # as the Makefile does
export FASTDDS_DEFAULT_PROFILES_FILE=${FASTDDS_DEFAULT_PROFILES_FILE:-$PWD/ros2_ws/src/robot_learning_ros/config/fastdds_localhost.xml}
RL=${RL:-.venv/bin/robot-learning}
OUT=${OUT:-runs/sim_to_sim}
REAL=${REAL:-sim/perturbed_real.yaml}          # the "robot"
WIDE=${WIDE:-sim/randomization_dynamics.yaml}  # the randomization arm
LOGS=${LOGS:-8}          # episodes teleoperated on the "robot" for system identification
DEMOS=${DEMOS:-40}       # demonstrations per training set (the demo's)
STEPS=${STEPS:-12000}    # training steps per policy
EVAL=${EVAL:-50}         # seeded evaluation episodes on the "robot"
SEED=${SEED:-3000000}
ARMS=${ARMS:-nominal fitted randomized fitted_objects robot}
PARAMS=${PARAMS:-kp_scale,damping_scale,friction_nm,latency_s}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
say() { echo "sim_to_sim: $*"; }

# 1. the robot's logs: scripted teleoperation on the "robot", through the graph
if [ ! -f "$OUT/logs.done" ]; then
    rm -rf "$OUT/logs.zarr"
    say "teleoperating the robot ($REAL) for $LOGS episodes"
    "$RL" collect --task pick_place --episodes "$LOGS" --dataset "$OUT/logs.zarr" --cameras none \
        randomization:="$PWD/$REAL" noise:=0.5 state_rate:=100 tactile_rate:=50
    touch "$OUT/logs.done"
fi

# 2. system identification from those logs, and the mirror's report before and after
if [ ! -f "$OUT/fitted.yaml" ]; then
    say "fitting $PARAMS to the robot's logs"
    "$RL" sysid --dataset "$OUT/logs.zarr" --params "$PARAMS" --max-evals "${SYSID_EVALS:-80}" \
        --episodes "${SYSID_EPISODES:-1,2,3}" --out "$OUT/fitted.yaml.tmp"
    mv "$OUT/fitted.yaml.tmp" "$OUT/fitted.yaml"
fi
for which in nominal fitted; do
    if [ ! -f "$OUT/mirror_$which/report.json" ]; then
        extra=(); [ "$which" = fitted ] && extra=(--randomization "$OUT/fitted.yaml")
        "$RL" mirror replay --dataset "$OUT/logs.zarr" --episode 3 --out "$OUT/mirror_$which" "${extra[@]}"
    fi
done

# the fit for the arm, the randomization's ranges for the objects
if [ ! -f "$OUT/fitted_objects.yaml" ]; then
    .venv/bin/python - "$OUT/fitted.yaml" "$WIDE" "$OUT/fitted_objects.yaml" <<'EOF'
import sys
import yaml
fit, wide = (yaml.safe_load(open(f)) for f in sys.argv[1:3])
fit["objects"] = wide["objects"]
open(sys.argv[3], "w").write("# sysid's fit for the arm, " + sys.argv[2] + "'s ranges for the objects\n"
                             + yaml.safe_dump(fit, sort_keys=False))
EOF
fi

# 3. a policy per training sim: demonstrations there, the demo's recipe, evaluated on the robot
for arm in $ARMS; do
    case $arm in
        nominal) params=none ;;
        fitted) params=$OUT/fitted.yaml ;;
        randomized) params=$PWD/$WIDE ;;
        fitted_objects) params=$OUT/fitted_objects.yaml ;;
        robot) params=$PWD/$REAL ;;
        *) echo "sim_to_sim: unknown arm '$arm'" >&2; exit 2 ;;
    esac
    if [ ! -f "$OUT/demos_$arm.done" ]; then
        rm -rf "$OUT/demos_$arm.zarr"
        say "$arm: $DEMOS demonstrations (sim parameters: $params)"
        "$RL" collect --task pick_place --episodes "$DEMOS" --dataset "$OUT/demos_$arm.zarr" --cameras none \
            --real-time-factor 2 randomization:="$params" noise:=0.5 state_rate:=100 tactile_rate:=50
        touch "$OUT/demos_$arm.done"
    fi
    if [ ! -f "$OUT/train_$arm.done" ]; then
        say "$arm: training $STEPS steps"
        if [ -f "$OUT/train_$arm/checkpoints/last/config.json" ]; then
            "$RL" train diffusion --resume "$OUT/train_$arm"
        else
            "$RL" train diffusion --dataset "$OUT/demos_$arm.zarr" --out "$OUT/train_$arm" \
                --obs ee_pose.data,gripper_state.position,cube_pose.data,target_pose.data \
                --relative cube_pose.data-ee_pose.data,target_pose.data-ee_pose.data --action tcp_pose \
                --denoiser mlp --lr 1e-3 --batch-size 128 --val-fraction 0.05 --warmup-steps 200 \
                --steps "$STEPS" --eval-every "$STEPS" --eval-episodes 5 --eval-max-steps 150 --eval-noise-scale 0
        fi
        touch "$OUT/train_$arm.done"
    fi
    for on in robot nominal; do
        res=$OUT/eval_${arm}_on_$on.json
        [ -f "$res" ] && continue
        rnd=(); [ "$on" = robot ] && rnd=(--randomization "$PWD/$REAL")
        say "$arm: evaluating on the $on sim, $EVAL episodes"
        "$RL" evaluate --checkpoint "$OUT/train_$arm/checkpoints/last" --where env --episodes "$EVAL" \
            --seed "$SEED" --noise-scale 0 --out "$OUT/eval_tmp" "${rnd[@]}"
        cp "$(ls -td "$OUT"/eval_tmp/eval-* | head -1)/results.json" "$res"
    done
done
.venv/bin/python - "$OUT" "$EVAL" $ARMS <<'EOF'
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

out, episodes, arms = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
label = {"nominal": "nominal sim", "fitted": "sysid's fit", "randomized": "randomized\ndynamics",
         "fitted_objects": "fit + randomized\nobjects", "robot": "the robot\nitself"}


def rate(arm, on):
    f = out / f"eval_{arm}_on_{on}.json"
    return json.loads(f.read_text())["success_rate"] * 100 if f.exists() else float("nan")


fig, ax = plt.subplots(figsize=(8, 3.8))
for k, (on, colour, name) in enumerate((("robot", "tab:red", 'on the "robot" (perturbed sim)'),
                                         ("nominal", "tab:gray", "on the nominal sim"))):
    values = [rate(a, on) for a in arms]
    ax.bar([i - 0.2 + 0.4 * k for i in range(len(arms))], values, 0.4, color=colour, label=name,
           alpha=1.0 if k == 0 else 0.6)
    for i, v in enumerate(values):
        ax.text(i - 0.2 + 0.4 * k, v + 1.5, f"{v:.0f}%", ha="center", fontsize=8)
    print("sim_to_sim: success " + on + ": " + ", ".join(f"{a} {v:.0f}%" for a, v in zip(arms, values)))
ax.set_xticks(range(len(arms)), [label.get(a, a) for a in arms], fontsize=8)
ax.set_xlabel("demonstrations collected on")
ax.set_ylabel(f"success over {episodes} seeded episodes (%)")
ax.set_ylim(0, 112)
ax.legend(loc="upper left", fontsize=8)
ax.set_title("Sim-to-sim: pick-and-place, a low-dimensional diffusion policy per training sim")
fig.tight_layout()
fig.savefig(out / "sim_to_sim.png", dpi=90)
print(f"sim_to_sim: {out / 'sim_to_sim.png'}")
EOF
