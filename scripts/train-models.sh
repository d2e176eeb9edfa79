#!/usr/bin/env bash
# Reproduces the shipped models (weights/) and the ablation table of the README, from nothing
# but this repository: synthetic data (vlsa synth), MiniLM prompt embeddings (vlsa init
# --text-encoder), training on domain A (vlsa train) and evaluation on domains A-D (vlsa eval).
#
#   scripts/train-models.sh data      # synthetic train/val/test sets under $DATA (default data/)
#   scripts/train-models.sh zoom-data # fundus close-up views (scripts/zoom-sets.py): the scale
#                                     # check $DATA/fundus-{A,B,C,D}-zoom{30,50} (24 each, the disc
#                                     # a fifth to a half of the view; A from seed 21, B-D seed 22),
#                                     # and $DATA/retina{,-zoom50,-zoom35,-zoom25}: samples/retina.jpg
#                                     # with its drawn mask, whole and as three disc-centred views;
#                                     # the frame check: the 512 px renders $DATA/fundus-X-512 and
#                                     # those and the photo in wider frames (-wide, -wideclip)
#   scripts/train-models.sh zoom-eval MODEL OUT.json
#                                     # vlsa eval of MODEL on those sets (close-up and frame checks)
#   scripts/train-models.sh score-fundus MODEL CONFIG OUT_DIR
#                                     # a retrained fundus model scored as every retraining since
#                                     # 2026-12-07 was (docs/ablations/fundus-lowend/): its zoom-out
#                                     # reference by scripts/zoom-reference.py on A-validation, the
#                                     # 4 x 4 candidate, then A-val + B held out (seeds 3-5) + the
#                                     # photo + A's close-ups (select.json), seed-3 and fresh A-D
#                                     # (test.json, fresh.json; 2 x 2 and one forward too), the
#                                     # photo's crops and zoom-eval; needs data, zoom-data and the
#                                     # fresh sets (ablate-seeds makes them); the scored model files
#                                     # go to $RUNS/score/<OUT_DIR's name>
#   scripts/train-models.sh ship [cardiac|fundus]
#                                     # weights/vlsa-{cardiac,fundus}-tiny.safetensors + eval JSON
#   scripts/train-models.sh ablate [cardiac|fundus]
#                                     # full / no-em / no-text / plain, same budget, eval JSON
#   scripts/train-models.sh ablate-seeds [cardiac|fundus]
#                                     # each variant with and without domain randomization, seeds
#                                     # $SEEDS, evaluated on fresh domains A-D (seed 12345); JSON in
#                                     # $SEED_OUT (default docs/ablations/seeds/), table by
#                                     # scripts/ablation-table.py [that folder]; RANDOMIZE="on"
#                                     # (or "off") runs one setting only; SEED_CONFIG=ship: the
#                                     # shipped fundus size; SEED_SHIFTS=K: also a K x K ensemble
#
# Needs a release build (cargo build --release) and the MiniLM folder (scripts/fetch-minilm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

V=${VLSA:-target/release/vlsa}
DATA=${DATA:-data}
RUNS=${RUNS:-runs}
ENC=${VLSA_MINILM_DIR:-.cache/minilm}
# Training budgets (steps of 8 images). Both shipped models are the default configuration
# (2.5 M parameters) at 128 px with its task's classes and prompts, each about an hour's budget
# on a 2-core AMD EPYC (family 25 model 17) on 2026-12-06: cardiac 4500 steps, 3619 s; fundus
# 6000 steps, 4513 s; the fundus model retrained on 2026-12-07 with --low-end 0.4, 6000 steps,
# 5216 s on a 2-core Intel Xeon (family 6 model 167) (their model cards have the models they
# replaced).
SHIP_STEPS_CARDIAC=${SHIP_STEPS_CARDIAC:-4500}
SHIP_STEPS_FUNDUS=${SHIP_STEPS_FUNDUS:-6000}
SHIP_CONFIG_CARDIAC=${SHIP_CONFIG_CARDIAC:-configs/cardiac-tiny.json}
# configs/fundus-tiny.json carries the automatic zoom-out's reference chosen for the shipped
# weights (docs/ablations/fundus-autozoom/); a retrained model needs it chosen again, by the
# rule scripts/zoom-reference.py applies (0.7 x its median disc extent on A-validation fields).
SHIP_CONFIG_FUNDUS=${SHIP_CONFIG_FUNDUS:-configs/fundus-tiny.json}
# The shipped models' shift ensembles (`vlsa init --shifts`, README "Evaluation"). Both train
# with 2 x 2 (their validation curves); the files are then given 4 x 4, chosen on 2026-12-06 on
# domain A's validation set by docs/ablations/fundus-shifts/RULE.md and
# docs/ablations/cardiac-shifts/RULE.md. The ensemble changes no weight.
SHIP_SHIFTS_TRAIN=2
SHIP_SHIFTS_CARDIAC=${SHIP_SHIFTS_CARDIAC:-4}
SHIP_SHIFTS_FUNDUS=${SHIP_SHIFTS_FUNDUS:-4}
# Extra `vlsa train` flags per shipped model (both with domain randomization, the default; the
# fundus model with 40 % low-end cameras since 2026-12-07, docs/ablations/fundus-lowend/).
SHIP_FLAGS_CARDIAC=${SHIP_FLAGS_CARDIAC-}
SHIP_FLAGS_FUNDUS=${SHIP_FLAGS_FUNDUS---low-end 0.4}
ABLATE_STEPS_CARDIAC=${ABLATE_STEPS_CARDIAC:-200}
ABLATE_STEPS_FUNDUS=${ABLATE_STEPS_FUNDUS:-100}
# ablate-seeds: runs in parallel (each lavapipe process uses 2 threads), seeds and variants.
SEEDS=${SEEDS:-0 1 2}
VARIANTS=${VARIANTS:-full no-em no-text plain}
JOBS=${JOBS:-2}
export LP_NUM_THREADS=${LP_NUM_THREADS:-$((4 / JOBS > 0 ? 4 / JOBS : 1))}
SEED_STEPS=${SEED_STEPS:-60}
# ablate-seeds: which randomization settings to run ("on off", or one of them).
RANDOMIZE=${RANDOMIZE:-on off}
# ablate-seeds: where the eval JSON goes (a run whose JSON is there is skipped).
SEED_OUT=${SEED_OUT:-docs/ablations/seeds}
# ablate-seeds: "small" (configs/cardiac-64-small.json, configs/fundus-128-small.json and their
# variants in configs/ablations/) or "ship" (the shipped fundus size, 2.5 M parameters:
# configs/ablations/fundus-ship-*.json, the shipped configuration without its zoom-out reference).
SEED_CONFIG=${SEED_CONFIG:-small}
# ablate-seeds: a shift ensemble to evaluate each model with as well (e.g. 4: `vlsa eval --shifts 4`),
# its JSON in "$SEED_OUT-shiftsK"; empty: one forward only.
SEED_SHIFTS=${SEED_SHIFTS:-}

# zoom-data, zoom-eval: the close-up views' sides, in hundredths of the image side (synthetic
# views around the disc, and the real photo's disc-centred crops).
ZOOM_SYNTH="30 50"
ZOOM_PHOTO="50 35 25"
# zoom-data, zoom-eval: the frame check's views, NAME:ASPECT:CLIP (scripts/zoom-sets.py --frame):
# the whole field in a frame 1.5 times as wide as high, and the field cut to 0.85 of its height
# in such a frame.
FRAMES="wide:1.5:1 wideclip:1.5:0.85"

config_of() { # task variant -> config path (SEED_CONFIG=ship: the shipped size, fundus only)
  if [ "$SEED_CONFIG" = ship ]; then echo "configs/ablations/$1-ship-$2.json"; return; fi
  local base; if [ "$1" = cardiac ]; then base=configs/cardiac-64-small.json; else base=configs/fundus-128-small.json; fi
  if [ "$2" = full ]; then echo "$base"; else echo "configs/ablations/$1-$2.json"; fi
}

train_one() { # task variant steps out-model [train flags] [config, else the variant's]
  # INIT_FLAGS: extra `vlsa init` flags; SHIPPED_SHIFTS: after training, the model file is given
  # this shift ensemble (`init --from`, the same tensors) before it is evaluated.
  local task=$1 variant=$2 steps=$3 out=$4 flags=${5:-} dir="$RUNS/$1-$2"
  local config=${6:-$(config_of "$1" "$2")}
  mkdir -p "$dir" "$(dirname "$out")"
  "$V" init --config "$config" --text-encoder "$ENC" --seed 0 --out "$dir/init.safetensors" ${INIT_FLAGS:-}
  "$V" train --model "$dir/init.safetensors" --vision-lr-mult 1 --seed 0 $flags \
    --data "$DATA/$task-A-train" --val "$DATA/$task-A-val" --steps "$steps" \
    --val-every 50 --checkpoint-every 50 --log-every 25 \
    --out "$dir/checkpoint.safetensors" --export "$out"
  if [ -n "${SHIPPED_SHIFTS:-}" ]; then
    "$V" init --config "$config" --from "$out" --shifts "$SHIPPED_SHIFTS" --out "$dir/shipped.safetensors"
    mv "$dir/shipped.safetensors" "$out"
  fi
  "$V" eval --model "$out" --data "$DATA/$task-A-test" --data "$DATA/$task-B-test" \
    --data "$DATA/$task-C-test" --data "$DATA/$task-D-test" --json "$dir/eval.json" $(regions_of "$task")
}

# Fundus models are also scored as the fundus literature does: the whole disc (rim and cup) and
# the cup (README, "Evaluation"). Names without spaces, so the flags survive word splitting.
regions_of() { # task -> extra vlsa eval flags
  if [ "$1" = fundus ]; then echo "--region whole-disc=1,2 --region cup=2"; fi
}

case "${1:-}" in
  data)
    for task in cardiac fundus; do
      "$V" synth --task $task --domain A --count 400 --size 128 --seed 1 --out "$DATA/$task-A-train"
      "$V" synth --task $task --domain A --count 32 --size 128 --seed 2 --out "$DATA/$task-A-val"
      for d in A B C D; do
        "$V" synth --task $task --domain $d --count 48 --size 128 --seed 3 --out "$DATA/$task-$d-test"
      done
    done ;;
  zoom-data)
    # Rendered at 512 px and cropped, so a view is as sharp as a real close-up, not an
    # upsampled corner of a 128 px image. Needs python3 with numpy and PIL.
    # The 512 px renders are kept: the whole view at that size ($DATA/fundus-X-512).
    for d in A B C D; do
      if [ $d = A ]; then seed=21; else seed=22; fi
      "$V" synth --task fundus --domain $d --count 24 --size 512 --seed $seed --out "$DATA/fundus-$d-512"
      for f in $ZOOM_SYNTH; do
        python3 scripts/zoom-sets.py "$DATA/fundus-$d-512" "$DATA/fundus-$d-zoom$f" --fraction 0.$f --seed 7
      done
    done
    mkdir -p "$DATA/retina/images" "$DATA/retina/masks"
    cp samples/retina.jpg "$DATA/retina/images/retina.jpg"
    cp samples/retina_mask.png "$DATA/retina/masks/retina.png"
    for f in $ZOOM_PHOTO; do
      python3 scripts/zoom-sets.py "$DATA/retina" "$DATA/retina-zoom$f" --fraction 0.$f --jitter 0
    done
    for frame in $FRAMES; do
      IFS=: read -r name aspect clip <<< "$frame"
      for d in A B C D; do
        python3 scripts/zoom-sets.py "$DATA/fundus-$d-512" "$DATA/fundus-$d-$name" --frame "$aspect" --clip "$clip"
      done
      python3 scripts/zoom-sets.py "$DATA/retina" "$DATA/retina-$name" --frame "$aspect" --clip "$clip"
    done ;;
  zoom-eval)
    [ $# -eq 3 ] || { echo "usage: $0 zoom-eval MODEL OUT.json" >&2; exit 1; }
    sets=()
    for d in A B C D; do
      for f in $ZOOM_SYNTH; do sets+=(--data "$DATA/fundus-$d-zoom$f"); done
    done
    sets+=(--data "$DATA/retina")
    for f in $ZOOM_PHOTO; do sets+=(--data "$DATA/retina-zoom$f"); done
    for d in A B C D; do sets+=(--data "$DATA/fundus-$d-512"); done
    for frame in $FRAMES; do
      name=${frame%%:*}
      for d in A B C D; do sets+=(--data "$DATA/fundus-$d-$name"); done
      sets+=(--data "$DATA/retina-$name")
    done
    "$V" eval --model "$2" "${sets[@]}" $(regions_of fundus) --json "$3" ;;
  score-fundus)
    [ $# -eq 4 ] || { echo "usage: $0 score-fundus MODEL CONFIG OUT_DIR" >&2; exit 1; }
    model=$2 config=$3 out=$4 work="$RUNS/score/$(basename "$4")"
    for s in 4 5; do
      [ -d "$DATA/fundus-B-test-s$s" ] ||
        "$V" synth --task fundus --domain B --count 48 --size 128 --seed $s --out "$DATA/fundus-B-test-s$s"
    done
    mkdir -p "$work"
    # The reference is measured with the zoom-out off, on the model's own A-validation masks.
    "$V" init --config "$config" --from "$model" --shifts 4 --out "$work/k4.safetensors"
    rm -rf "$work/seg-aval"
    "$V" segment --model "$work/k4.safetensors" --zoom-out 1 --out "$work/seg-aval" \
      --image "$DATA/fundus-A-val/images" > "$work/seg-aval.log"
    python3 scripts/zoom-reference.py "$work/seg-aval" "$config" "$out/config.json" | tee "$out/extent.txt"
    "$V" init --config "$out/config.json" --from "$model" --shifts 4 --out "$work/candidate.safetensors"
    m="$work/candidate.safetensors" r=$(regions_of fundus)
    test_sets=() fresh_sets=()
    for d in A B C D; do test_sets+=(--data "$DATA/fundus-$d-test"); fresh_sets+=(--data "$DATA/fundus-$d-fresh"); done
    "$V" eval --model "$m" $r --data "$DATA/fundus-A-val" --data "$DATA/fundus-B-test" \
      --data "$DATA/fundus-B-test-s4" --data "$DATA/fundus-B-test-s5" --data "$DATA/retina" \
      --data "$DATA/fundus-A-zoom30" --data "$DATA/fundus-A-zoom50" --json "$out/select.json"
    "$V" eval --model "$m" $r "${test_sets[@]}" --json "$out/test.json"
    "$V" eval --model "$m" $r "${fresh_sets[@]}" --json "$out/fresh.json"
    photo_crops=(); for f in $ZOOM_PHOTO; do photo_crops+=(--data "$DATA/retina-zoom$f"); done
    "$V" eval --model "$m" $r "${photo_crops[@]}" --json "$out/photo-crops.json"
    for k in 2 1; do
      "$V" eval --model "$m" $r "${test_sets[@]}" --shifts $k --json "$out/seed3.k$k.eval.json"
      "$V" eval --model "$m" $r "${fresh_sets[@]}" --shifts $k --json "$out/fresh.k$k.eval.json"
    done
    VLSA="$V" DATA="$DATA" "$0" zoom-eval "$m" "$out/zoom.json" ;;
  ship)
    for task in ${2:-cardiac fundus}; do
      case $task in
        cardiac) steps=$SHIP_STEPS_CARDIAC flags=$SHIP_FLAGS_CARDIAC config=$SHIP_CONFIG_CARDIAC shifts=$SHIP_SHIFTS_CARDIAC ;;
        fundus) steps=$SHIP_STEPS_FUNDUS flags=$SHIP_FLAGS_FUNDUS config=$SHIP_CONFIG_FUNDUS shifts=$SHIP_SHIFTS_FUNDUS ;;
        *) echo "unknown task '$task'; the tasks are cardiac and fundus" >&2; exit 1 ;;
      esac
      [ "$shifts" = "$SHIP_SHIFTS_TRAIN" ] && shifts=""
      INIT_FLAGS="--shifts $SHIP_SHIFTS_TRAIN" SHIPPED_SHIFTS=$shifts \
        train_one "$task" full "$steps" "weights/vlsa-$task-tiny.safetensors" "$flags" "$config"
    done ;;
  ablate)
    for task in ${2:-cardiac fundus}; do
      if [ $task = cardiac ]; then steps=$ABLATE_STEPS_CARDIAC; else steps=$ABLATE_STEPS_FUNDUS; fi
      for variant in full no-em no-text plain; do
        RUNS="$RUNS/ablate" train_one $task $variant "$steps" "$RUNS/ablate/$task-$variant/model.safetensors"
      done
    done ;;
  ablate-seeds)
    task=${2:-cardiac}
    for d in A B C D; do
      [ -d "$DATA/$task-$d-fresh" ] ||
        "$V" synth --task $task --domain $d --count 24 --size 128 --seed 12345 --out "$DATA/$task-$d-fresh"
    done
    mkdir -p "$SEED_OUT"
    [ -z "$SEED_SHIFTS" ] || mkdir -p "$SEED_OUT-shifts$SEED_SHIFTS"
    fresh_eval() { # model json [eval flags]: the fresh sets A-D
      local model=$1 json=$2; shift 2
      "$V" eval --model "$model" --data "$DATA/$task-A-fresh" --data "$DATA/$task-B-fresh" \
        --data "$DATA/$task-C-fresh" --data "$DATA/$task-D-fresh" --json "$json" $(regions_of "$task") "$@"
    }
    one() { # variant randomize(on|off) seed
      local name="$task-$1-$2-s$3" dir="$RUNS/seeds/$task-$1-$2-s$3" flag=""
      [ "$2" = off ] && flag=--no-randomize
      # A run whose folder exists is done or under way (delete the folder to run it again).
      [ -f "$SEED_OUT/$name.eval.json" ] || [ -d "$dir" ] && return 0
      mkdir -p "$dir"
      { "$V" init --config "$(config_of "$task" "$1")" --text-encoder "$ENC" --seed "$3" --out "$dir/init.safetensors" &&
        /usr/bin/time -f "train wall %e s, cpu %U s" "$V" train --model "$dir/init.safetensors" --vision-lr-mult 1 \
          --seed "$3" $flag --data "$DATA/$task-A-train" --steps "$SEED_STEPS" --val-every 100000 \
          --checkpoint-every 100000 --log-every 10 --out "$dir/checkpoint.safetensors" --export "$dir/model.safetensors" &&
        fresh_eval "$dir/model.safetensors" "$SEED_OUT/$name.eval.json" &&
        { [ -z "$SEED_SHIFTS" ] ||
          fresh_eval "$dir/model.safetensors" "$SEED_OUT-shifts$SEED_SHIFTS/$name.eval.json" --shifts "$SEED_SHIFTS"; }
      } > "$dir/log.txt" 2>&1
    }
    # Seed-major order: an interrupted set still has whole seeds of every variant.
    for seed in $SEEDS; do
      for variant in $VARIANTS; do
        for r in $RANDOMIZE; do
          while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
          one "$variant" "$r" "$seed" &
        done
      done
    done
    wait ;;
  *) echo "usage: $0 data|zoom-data|zoom-eval|score-fundus|ship|ablate|ablate-seeds" >&2; exit 1 ;;
esac
