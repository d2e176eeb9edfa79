#!/usr/bin/env bash
# One command that measures vlsa on the GPU it finds and writes device-report.json: the adapter
# and driver; GFLOP/s of every matmul path at 1024^3 and at the default model's shapes in
# nn/nt/tn; EM iteration ms at (N 4096, C 256, M 64), the path's own iteration and the
# seven-dispatch one; attention forward/backward GFLOP/s at head widths 64 and 128; the
# default config's forward and training-step GPU ms at batch 1 and
# 8 with dispatches and submits per step; pass/fail of the kernel tests and PyTorch model
# fixtures. It runs from prebuilt binaries (scripts/build-device-bundle.sh builds them): no
# Rust toolchain and no network needed, under 8 minutes on a discrete GPU.
#
# Usage: scripts/device-report.sh [--quick] [--no-tests] [--out FILE]
#   --quick     small shapes, a small model and no tests: the same keys in seconds (CI, lavapipe)
#   --no-tests  skip the test binaries
# Binaries: $VLSA_BIN (default target/release/vlsa), $VLSA_EXAMPLES (default
# target/release/examples), target/device-tests/LIST. A missing binary makes its part
# "skipped" with the reason; every key is always present.
# FLOP conventions: matmul 2·M·N·K; attention forward 4·B·H·Nq·Nk·dh (two products),
# backward 10·B·H·Nq·Nk·dh (P recomputed, then dV, dP, dQ, dK).
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0
tests=1
out=device-report.json
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1; tests=0 ;;
        --no-tests) tests=0 ;;
        --out) out="$2"; shift ;;
        *) echo "device-report.sh: unknown option $1 (use --quick, --no-tests, --out FILE)" >&2; exit 2 ;;
    esac
    shift
done

vlsa="${VLSA_BIN:-target/release/vlsa}"
# Each measurement gets a time limit, so one slow or hung part cannot take the whole budget;
# a part that runs out is reported as failed with the reason.
limit=$([[ $quick == 1 ]] && echo 120 || echo 150)
lim() { timeout "$limit" "$@"; }
examples="${VLSA_EXAMPLES:-target/release/examples}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
started=$(date +%s)

# JSON string escaping for one line of text.
js() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g' | tr -d '\000-\037')"; }
num() { [[ "$1" =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]] && printf '%s' "$1" || printf 'null'; }
log() { echo "$@" >&2; }

if [[ ! -x "$vlsa" ]]; then
    echo "device-report.sh: $vlsa not found; build it with scripts/build-device-bundle.sh (or set VLSA_BIN)" >&2
    exit 1
fi

# ---- adapter ----
info="$("$vlsa" info 2>&1)"
field() { printf '%s\n' "$info" | sed -n "s/^$1:[[:space:]]*//p" | head -1; }
adapter="{\"name\": $(js "$(field adapter)"), \"backend\": $(js "$(field backend)"), \"device_type\": $(js "$(field 'device type')"), \"driver\": $(js "$(field driver)"), \"kernel_path\": $(js "$(field 'kernel path' | cut -d' ' -f1)"), \"subgroups\": $(js "$(field subgroups)")}"
log "adapter: $(field adapter) ($(field backend)), driver $(field driver)"

# ---- matmul: every path, square and the model's shapes ----
if [[ $quick == 1 ]]; then
    shapes="128x128x128 96x80x64"
else
    # 1024^3; the default model at batch 8 (8 x 257 tokens, width 192, MLP 768): a Linear's
    # forward, input gradient and weight gradient.
    shapes="1024x1024x1024 2056x192x192 2056x768x192 2056x192x768 192x192x2056 768x192x2056"
fi
matmul_items=()
matmul_status="ok"
for shape in $shapes; do
    IFS=x read -r m n k <<< "$shape"
    for layout in nn nt tn; do
        if ! text="$(lim "$vlsa" profile matmul --m "$m" --n "$n" --k "$k" --layout "$layout" --path all 2>&1)"; then
            matmul_status="skipped: \`vlsa profile matmul\` failed: $(printf '%s' "$text" | tail -1)"
            break 2
        fi
        while read -r line; do
            path="$(printf '%s\n' "$line" | grep -oE '\b(registers|subgroup|tiled)\b' | head -1)"
            gf="$(printf '%s\n' "$line" | grep -oE '[0-9]+(\.[0-9]+)? GFLOP/s' | head -1 | cut -d' ' -f1)"
            [[ -z "$gf" ]] && continue
            matmul_items+=("{\"m\": $m, \"n\": $n, \"k\": $k, \"layout\": \"$layout\", \"path\": $(js "${path:-default}"), \"gflops\": $(num "$gf")}")
            log "matmul ${m}x${n}x${k} $layout ${path:-default}: $gf GFLOP/s"
        done <<< "$text"
    done
done
matmul="{\"status\": $(js "$matmul_status"), \"results\": [$(IFS=,; echo "${matmul_items[*]}")]}"

# ---- EM iteration ----
if [[ $quick == 1 ]]; then em_args=(--tokens 256 --width 64 --bases 16); else em_args=(--tokens 4096 --width 256 --bases 64); fi
# The path's own iteration (two passes on a GPU), then the seven-dispatch one for comparison.
em_iter_ms() { # extra profile flags -> mean ms per iteration, or fails
    local text
    text="$(lim "$vlsa" profile em "${em_args[@]}" --iters 3 "$@" 2>&1)" || { printf '%s' "$text" | tail -1; return 1; }
    printf '%s\n' "$text" | awk '/^  iter=[0-9]+ / {s += $2; c++} END {if (c) printf "%.4f", s / c / 1000}'
}
if iter_ms="$(em_iter_ms)"; then
    per_step_ms="$(em_iter_ms --iteration per-step)" || per_step_ms=""
    em="{\"status\": \"ok\", \"args\": $(js "${em_args[*]} --iters 3"), \"iteration_ms\": $(num "$iter_ms"), \"iteration_ms_per_step\": $(num "$per_step_ms")}"
    log "EM iteration (${em_args[*]}): $iter_ms ms (seven dispatches per iteration: ${per_step_ms:-failed} ms)"
else
    text="$iter_ms"
    em="{\"status\": $(js "failed: $(printf '%s' "$text" | tail -1)"), \"args\": $(js "${em_args[*]}"), \"iteration_ms\": null}"
fi

# ---- attention, head widths 64 and 128 ----
if [[ $quick == 1 ]]; then att_shapes="1,1,65,65,1,64 1,1,65,65,1,128"; iters=2; else att_shapes="8,8,257,257,3,64 8,8,257,257,3,128"; iters=5; fi
att_items=()
att_status="ok"
if [[ -x "$examples/attention_time" ]]; then
    if text="$(lim "$examples/attention_time" --iters "$iters" $att_shapes 2>&1)"; then
        for s in $att_shapes; do
            IFS=, read -r b bk nq nk h dh <<< "$s"
            read -r fwd bwd <<< "$(printf '%s\n' "$text" | awk -v s="$s" '$1 == s {print $2, $3}')"
            flops=$((b * h * nq * nk * dh))
            gf() { awk -v f="$1" -v ms="$2" 'BEGIN { if (ms > 0) printf "%.2f", f / (ms * 1e6); else print "null" }'; }
            att_items+=("{\"shape\": \"$s\", \"head_width\": $dh, \"forward_ms\": $(num "$fwd"), \"backward_ms\": $(num "$bwd"), \"forward_gflops\": $(num "$(gf $((4 * flops)) "$fwd")"), \"backward_gflops\": $(num "$(gf $((10 * flops)) "$bwd")")}")
            log "attention $s: forward $fwd ms, backward $bwd ms"
        done
    else
        att_status="failed (exit $?, 124 = over the ${limit} s limit): $(printf '%s' "$text" | tail -1)"
    fi
else
    att_status="skipped: $examples/attention_time not found (scripts/build-device-bundle.sh builds it)"
fi
attention="{\"status\": $(js "$att_status"), \"results\": [$(IFS=,; echo "${att_items[*]}")]}"

# ---- the whole model ----
config=configs/fundus-tiny.json
batches="1 8"
if [[ $quick == 1 ]]; then
    # A small model of the same structure, so the keys and the code path are the same.
    config="$work/quick.json"
    sed -e 's/"image_size": 128/"image_size": 32/' -e 's/"width": 192, "layers": 4, "heads": 3/"width": 32, "layers": 1, "heads": 1/' \
        -e 's/"width": 128, "layers": 2, "heads": 4/"width": 32, "layers": 1, "heads": 2/' configs/fundus-tiny.json > "$config"
    batches="1 2"
fi
model_items=()
model_status="ok"
if text="$("$vlsa" init --config "$config" --out "$work/model.safetensors" 2>&1)"; then
    for b in $batches; do
        for pass in forward train_step; do
            flag=(); [[ $pass == train_step ]] && flag=(--backward)
            if ! text="$(lim "$vlsa" profile model --model "$work/model.safetensors" --batch "$b" "${flag[@]}" 2>&1)"; then
                model_status="failed: $(printf '%s' "$text" | tail -1)"
                continue
            fi
            gpu_ms="$(printf '%s\n' "$text" | awk '$1 == "total" && $3 == "dispatches" {print $4; exit}')"
            read -r disp subs wall <<< "$(printf '%s\n' "$text" | sed -n 's/^unprofiled pass: \([0-9]*\) dispatches, \([0-9]*\) submits, \([0-9.]*\) ms wall.*/\1 \2 \3/p')"
            timing="$(printf '%s\n' "$text" | sed -n 's/^timing: //p' | head -1)"
            model_items+=("{\"batch\": $b, \"pass\": \"$pass\", \"gpu_ms\": $(num "$gpu_ms"), \"wall_ms\": $(num "$wall"), \"dispatches\": $(num "$disp"), \"submits\": $(num "$subs"), \"timing\": $(js "$timing")}")
            log "model batch $b $pass: GPU $gpu_ms ms ($timing), wall $wall ms, $disp dispatches, $subs submits"
        done
    done
else
    model_status="failed: $(printf '%s' "$text" | tail -1)"
fi
model="{\"status\": $(js "$model_status"), \"config\": $(js "$config"), \"results\": [$(IFS=,; echo "${model_items[*]}")]}"

# ---- tests ----
test_items=()
test_status="ok"
list=target/device-tests/LIST
if [[ $tests == 0 ]]; then
    test_status="skipped (--quick or --no-tests)"
elif [[ ! -f $list ]]; then
    test_status="skipped: $list not found (scripts/build-device-bundle.sh builds the test binaries)"
else
    # The binaries look for their data where they were built; point that path here if it differs.
    root="$(cat target/device-tests/BUILD_ROOT 2>/dev/null || true)"
    if [[ -n "$root" && ! -e "$root" ]]; then
        mkdir -p "$(dirname "$root")" 2>/dev/null && ln -s "$(pwd)" "$root" 2>/dev/null ||
            log "cannot link $root to $(pwd): tests that read files may fail"
    fi
    while read -r name exe; do
        t0=$(date +%s)
        if timeout 300 "$exe" --test-threads=1 -q > "$work/$name.log" 2>&1; then result=pass; else result=fail; fi
        summary="$(grep -E '^test result:' "$work/$name.log" | tail -1)"
        test_items+=("{\"name\": $(js "$name"), \"result\": \"$result\", \"summary\": $(js "$summary"), \"seconds\": $(( $(date +%s) - t0 ))}")
        log "tests $name: $result ($summary)"
    done < "$list"
fi
tests_json="{\"status\": $(js "$test_status"), \"results\": [$(IFS=,; echo "${test_items[*]}")]}"

cat > "$out" <<EOF
{
  "date": $(js "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),
  "quick": $([[ $quick == 1 ]] && echo true || echo false),
  "host_cpu": $(js "$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"),
  "adapter": $adapter,
  "matmul": $matmul,
  "em": $em,
  "attention": $attention,
  "model": $model,
  "tests": $tests_json,
  "seconds": $(( $(date +%s) - started ))
}
EOF
cat "$out"
echo "wrote $out" >&2
