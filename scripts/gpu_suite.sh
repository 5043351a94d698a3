#!/usr/bin/env bash
# Everything that needs a GPU, in one command (about 9 minutes at most), for the lent GPU machine:
#   HIERTCN_COMMIT=<hash> bash scripts/gpu_suite.sh   # repository root; results go to $OUT (default ./gpu-out)
# Steps, in this order (a step that fails or runs past its budget is recorded and the next one runs):
#   device-info  nvidia-smi and meta.json (date, device, commit, versions)
#   gate         ~20 s: CUDA is there, hiertcn_kernels imports, one tiny Triton tcn_block (fwd+bwd) and
#                segment_reduce match a float64 reference, and (if cupy imports) one csrc_bench kernel
#                builds and matches. If the gate fails the suite STOPS at once and exits 3, so a short
#                session can fix the problem and rerun with the minutes it has left.
#   cuda-tests   pytest -m cuda over the test files in a fixed order, cheapest first: segment, the
#                CUDA C (csrc) tests, conv, then any other file with cuda-marked tests; -rs lists skip
#                reasons, --durations=15 the slowest; pytest-xdist (-n $CUDA_TEST_WORKERS, default 6)
#                only where it imports.
#   bench-<file> the GPU benchmarks (-k "cuda or gpu"), one file per step: models, segment, conv, csrc.
#                Benchmark files without GPU benchmarks are not run (a file with cuda-marked tests
#                that is not in BENCH_FILES is named in a warning instead).
#   profile      scripts/profile_train_step.py: step times of HierTCN and the baselines, HierTCN's host
#                syncs by source line, kernel launches and GPU-busy time per step.
#   bench-32     hiertcn bench at the default 32 lanes / users per batch.
#   bench-256    hiertcn bench with 256 lanes / users per batch.
#   train-32     hiertcn compare, HierTCN and GRU4Rec, 2 epochs each at the defaults (32 lanes / users),
#                then HierTCN with --precision bf16: the training pipeline's interactions/s (loader thread,
#                a new batch moved every step) and test mrr.
#   graph-probe  scripts/graph_step_probe.py: HierTCN's 32-lane step captured in a CUDA graph and replayed,
#                against the same step eager and GRU4Rec's (what removing the host overhead would buy).
#   tune         scripts/tune_gpu_kernels.py: the kernels' launch-choice sweep, split conv backward
#                (GPU_SUITE_TUNE_ARGS: its arguments, e.g. "--only conv --channels 256").
#                These six print into suite.log only and are skipped in a dry run or when GPU_SUITE_PROFILE /
#                GPU_SUITE_BENCH_32 / GPU_SUITE_BENCH_256 / GPU_SUITE_TRAIN_32 / GPU_SUITE_GRAPH_PROBE /
#                GPU_SUITE_TUNE is 0; in a
#                rerun of a part (GPU_SUITE_TEST_FILES or GPU_SUITE_BENCH_FILES set) only those set to 1 run.
#   summary      exit statuses, test counts, the skip reasons of the cuda tests (from the JUnit XML),
#                and a warning for each expected bench-<file>.json that is missing or empty.
# Into $OUT (the device returns at most 8 files: keep it so): suite.log (everything printed),
# meta.json, steps.tsv (step, exit status, seconds), cuda-tests.xml (JUnit), bench-<file>.json
# (pytest-benchmark, one per file: segment, conv, csrc, models).
# Turn the returned folder into benchmarks/results/ with scripts/record_gpu_results.py.
# The commit: $HIERTCN_COMMIT when set, else git's HEAD when the checkout has .git, else "unknown".
# Budgets (seconds), each can be set: SUITE_BUDGET (the whole suite, default 540: no step starts or
# runs past it), BUDGET_INFO (30), BUDGET_GATE (60), BUDGET_TESTS (170), BUDGET_BENCH_SEGMENT (90),
# BUDGET_BENCH_CONV (60), BUDGET_BENCH_CSRC (40), BUDGET_BENCH_MODELS (60), BUDGET_PROFILE (60),
# BUDGET_BENCH_32 (60), BUDGET_BENCH_256 (90), BUDGET_TRAIN_32 (90), BUDGET_GRAPH_PROBE (45), BUDGET_TUNE (240); more than the suite's 540 in all: the
# second H200 run took 290 s in all, and the tune step, last, takes what is left (it prints as it goes).
# Reruns of a part: GPU_SUITE_TEST_FILES="tests/kernels/test_conv.py" (space-separated paths),
# GPU_SUITE_BENCH_FILES="conv models" (names; "" runs no benchmark), BUDGET_TESTS=0 (no tests),
# GATE_SKIP_CSRC=1 (the gate does not build the CUDA C kernel).
# GPU_SUITE_DRY_RUN=1 runs the suite without a GPU (the gate checks the kernels in Triton's
# interpreter on CPU; every cuda test and GPU benchmark skips): a check of the plumbing only
# (tests/scripts/test_gpu_suite.py). Exit status: 3 when the gate failed, else 0 (see steps.tsv).
set -u
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
export GPU_SUITE_DRY_RUN="${GPU_SUITE_DRY_RUN:-0}"
LOG="$OUT/suite.log"
: > "$LOG"
printf 'step\texit_status\tseconds\n' > "$OUT/steps.tsv"
# The -k expression that selects every cuda-marked benchmark (-k also matches marker names; GPU
# benchmarks are named *cuda* or *gpu* as well).
BENCH_SELECT="cuda or gpu"
# Test files with cuda-marked tests, cheapest and most independent first (conv compiles ~64 kernels).
# GPU_SUITE_TEST_FILES (space-separated paths) replaces the list, and then no other file is added.
read -ra CUDA_TEST_FILES <<< "${GPU_SUITE_TEST_FILES:-tests/kernels/test_segment.py tests/kernels/test_csrc_segment.py \
tests/kernels/test_csrc_conv.py tests/kernels/test_conv.py}"
# GPU benchmark files (tests/benchmarks/test_bench_<name>.py), in the order they run; GPU_SUITE_BENCH_FILES
# (space-separated names) replaces the list, to rerun a part in what is left of a session ("" runs none).
read -ra BENCH_FILES <<< "${GPU_SUITE_BENCH_FILES-models segment conv csrc}"

SUITE_START=$(date +%s)
LAST_RC=0
step() {  # step NAME BUDGET_SECONDS COMMAND...: SIGINT at the budget (pytest still writes its reports)
  local name=$1 budget=$2 start left
  shift 2
  left=$(( ${SUITE_BUDGET:-540} - ($(date +%s) - SUITE_START) - 25 ))  # 25: the kill grace + slack
  if (( left < budget )); then budget=$left; fi
  if (( budget <= 0 )); then
    echo "===== $name: skipped, the suite's ${SUITE_BUDGET:-540}s are spent =====" | tee -a "$LOG"
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
    LAST_RC=skipped
    return 0
  fi
  echo "===== $name (budget ${budget}s): $* =====" | tee -a "$LOG"
  start=$(date +%s)
  timeout -s INT -k 20 "$budget" "$@" 2>&1 | tee -a "$LOG"
  LAST_RC=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$LAST_RC" "$(( $(date +%s) - start ))" >> "$OUT/steps.tsv"
  echo "===== $name: exit status $LAST_RC$( ((LAST_RC == 124)) && echo " (ran past its budget)") =====" \
    | tee -a "$LOG"
}

device_info() {  # nvidia-smi, then meta.json: what the record script names the results folder after
  if command -v nvidia-smi > /dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  python3 - "$OUT/meta.json" <<'PY'
import datetime, json, os, platform, subprocess, sys
import torch
def version(module):
    try:
        return __import__(module).__version__
    except Exception as exc:  # a missing package is information, not an error
        return f"unavailable ({type(exc).__name__})"
commit = os.environ.get("HIERTCN_COMMIT", "")
if not commit:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except Exception:
        commit = "unknown"
meta = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device",
    "commit": commit, "dry_run": os.environ.get("GPU_SUITE_DRY_RUN") == "1",
    "python": platform.python_version(), "torch": torch.__version__,
    "torch_cuda": torch.version.cuda, "triton": version("triton"), "cupy": version("cupy"),
    "numba": version("numba"),
}
print(json.dumps(meta, indent=1))
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
PY
}

gate() {  # fail fast: the smallest run of each GPU path, against float64 references
  python3 - <<'PY'
import os, sys, time, traceback

start = time.perf_counter()
failures = []


def check(name, fn):
    t0 = time.perf_counter()
    try:
        detail = fn()
    except Exception:
        traceback.print_exc()
        failures.append(name)
        print(f"gate: {name}: FAILED ({time.perf_counter() - t0:.1f}s)", flush=True)
    else:
        print(f"gate: {name}: ok ({time.perf_counter() - t0:.1f}s){': ' + detail if detail else ''}", flush=True)


def rel_err(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    if not bool(out.isfinite().all()):
        raise AssertionError("non-finite values in the output (unwritten elements?)")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def close(name, out, ref, tol):
    err = rel_err(out, ref)
    if not err < tol:
        raise AssertionError(f"{name}: relative error {err:.3g} >= {tol}")
    return f"{name} {err:.1e}"


import torch  # noqa: E402

dry = os.environ.get("GPU_SUITE_DRY_RUN") == "1"
if torch.cuda.is_available():
    device = "cuda"
    print(f"gate: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda})", flush=True)
elif dry:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported
    device = "cpu"
    print("gate: DRY RUN without a CUDA device: the Triton kernels run on CPU in Triton's interpreter", flush=True)
else:
    print(f"gate: torch.cuda.is_available() is False (torch {torch.__version__}, built for CUDA "
          f"{torch.version.cuda}); GPU_SUITE_DRY_RUN=1 runs the suite without a GPU", flush=True)
    sys.exit(1)
os.environ["HIERTCN_BACKEND"] = "triton"  # the kernels themselves, on CUDA and in the interpreter
try:
    import hiertcn_kernels as K
    from hiertcn_kernels import reference as R
except Exception:
    traceback.print_exc()
    print("gate: import hiertcn_kernels: FAILED", flush=True)
    sys.exit(1)

torch.manual_seed(0)
offsets = torch.tensor([0, 3, 3, 20, 21, 64], device=device)  # an empty and a one-row session too


def tcn_block():
    c, taps = 64, 5
    x = torch.randn(64, c, device=device, requires_grad=True)
    w = (torch.randn(c, c, taps, device=device) / (c * taps) ** 0.5).requires_grad_()
    b = torch.randn(c, device=device, requires_grad=True)
    y = K.tcn_block(x, w, b, dilation=2, activation="relu", cu_seqlens=offsets)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    y_ref = R.tcn_block(xd, wd, bd, dilation=2, activation="relu", cu_seqlens=offsets)
    refs = torch.autograd.grad(y_ref, (xd, wd, bd), dy.double())
    tol = 5e-3  # fp32 on TF32 tensor cores lands near 3e-4
    return ", ".join(close(n, o, r, tol) for n, o, r in zip(("y", "dx", "dw", "db"), (y, *grads), (y_ref, *refs)))


def segment_reduce():
    values = torch.randn(64, 48, device=device, requires_grad=True)
    out = K.segment_reduce(values, offsets, "mean")
    grad = torch.randn_like(out)
    (dv,) = torch.autograd.grad(out, values, grad)
    vd = values.detach().double().requires_grad_()
    ref = R.segment_reduce(vd, offsets, "mean")
    (dv_ref,) = torch.autograd.grad(ref, vd, grad.double())
    return ", ".join([close("mean", out, ref, 1e-5), close("d_values", dv, dv_ref, 1e-5)])


check("triton tcn_block relu fwd+bwd", tcn_block)
check("triton segment_reduce mean fwd+bwd", segment_reduce)
if device != "cuda":
    print("gate: csrc_bench (CUDA C through CuPy): not checked without a CUDA device", flush=True)
elif os.environ.get("GATE_SKIP_CSRC") == "1":
    print("gate: csrc_bench: not checked (GATE_SKIP_CSRC=1)", flush=True)
else:
    try:
        import cupy  # noqa: F401
    except Exception as exc:
        print(f"gate: cupy does not import ({type(exc).__name__}: {exc}): the CUDA C tests and races will skip",
              flush=True)
    else:
        def csrc_segment_reduce():
            from csrc_bench.segment import segment_reduce_cuda

            values = torch.randn(64, 48, device=device)
            ref = R.segment_reduce(values.double(), offsets, "sum")
            return close("sum", segment_reduce_cuda(values, offsets, "sum"), ref, 1e-5)

        check("csrc_bench segment_reduce sum (NVRTC build; GATE_SKIP_CSRC=1 skips it)", csrc_segment_reduce)
print(f"gate: {time.perf_counter() - start:.1f}s, " + (f"FAILED: {', '.join(failures)}" if failures else "passed"),
      flush=True)
sys.exit(1 if failures else 0)
PY
}

summary() {  # summary GATE_FAILED EXPECTED_BENCH_JSON...: statuses, test counts, skip reasons, missing output
  python3 - "$OUT" "$@" <<'PY'
import json, sys
from pathlib import Path

sys.path.insert(0, "scripts")  # the suite runs from the repository root
from record_gpu_results import count_line, junit_outcomes

out, gate_failed, expected = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
print("steps:\n" + (out / "steps.tsv").read_text().rstrip())
if gate_failed:
    print("WARNING: the gate failed: the suite stopped before the tests and benchmarks (see the gate step above)")
xml = out / "cuda-tests.xml"
if gate_failed:
    pass
elif not xml.exists() or xml.stat().st_size == 0:
    print("WARNING: cuda-tests.xml is missing or empty: the cuda-tests step did not finish writing it")
else:
    counts, failed, reasons = junit_outcomes(xml)
    print("cuda tests: " + (count_line(counts) or "none ran"))
    for test, outcome in failed:
        print(f"  FAILED {test} ({outcome})")
    if reasons:
        print("cuda tests skipped, by reason:")
        for reason, n in sorted(reasons.items(), key=lambda item: -item[1]):
            print(f"  {n:4d}  {reason}")
for name in expected:
    path = out / name
    if not path.exists():
        print(f"WARNING: {name} is missing: no GPU benchmark of this file finished, or its step did not run")
        continue
    try:
        benchmarks = json.loads(path.read_text() or "{}").get("benchmarks", [])
    except ValueError:
        print(f"WARNING: {name} is not valid JSON (its step was killed while writing it?)")
        continue
    if not benchmarks:
        print(f"WARNING: {name} is empty: no GPU benchmark of this file finished")
    else:
        print(f"{name}: {len(benchmarks)} benchmarks")
files = [p for p in out.rglob("*") if p.is_file()]
if len(files) > 8:
    print(f"WARNING: {len(files)} files under {out}: the device returns at most 8")
PY
}
export -f device_info gate summary
export OUT LOG

finish() {  # finish GATE_FAILED
  echo "===== summary =====" | tee -a "$LOG"
  summary "$1" "${EXPECTED_JSON[@]}" 2>&1 | tee -a "$LOG"
  echo "===== done: $OUT =====" | tee -a "$LOG"
}
EXPECTED_JSON=()

step device-info "${BUDGET_INFO:-30}" bash -c device_info

step gate "${BUDGET_GATE:-60}" bash -c gate
if [[ $LAST_RC != 0 ]]; then
  echo "===== GATE FAILED (exit status $LAST_RC): the suite stops here, no tests or benchmarks ran;" \
    "fix it and rerun =====" | tee -a "$LOG"
  if [[ $LAST_RC == 124 ]]; then
    echo "===== the gate ran past its budget: if it was only slow compiles, rerun with a larger BUDGET_GATE =====" \
      | tee -a "$LOG"
  fi
  printf 'suite\tstopped: gate failed\t0\n' >> "$OUT/steps.tsv"
  finish 1
  exit 3
fi

test_files=()
for path in "${CUDA_TEST_FILES[@]}"; do
  if [[ -f $path ]]; then test_files+=("$path"); else echo "WARNING: $path not found" | tee -a "$LOG"; fi
done
if [[ -z ${GPU_SUITE_TEST_FILES:-} ]]; then
  while IFS= read -r path; do  # any other file with cuda-marked tests, last
    [[ " ${CUDA_TEST_FILES[*]} " == *" $path "* ]] || test_files+=("$path")
  done < <(grep -rlE 'mark\.cuda' tests --include='test_*.py' | grep -v '^tests/benchmarks/' | sort)
fi
xdist=()
if python3 -c "import xdist" 2> /dev/null; then xdist=(-n "${CUDA_TEST_WORKERS:-6}"); fi
step cuda-tests "${BUDGET_TESTS:-170}" python3 -m pytest -m cuda -q -rs --durations=15 -p no:cacheprovider \
  "${xdist[@]}" --junitxml="$OUT/cuda-tests.xml" "${test_files[@]}"

for file in "${BENCH_FILES[@]}"; do
  path=tests/benchmarks/test_bench_$file.py
  if [[ ! -f $path ]]; then echo "WARNING: $path not found" | tee -a "$LOG"; continue; fi
  case $file in
    segment) budget=${BUDGET_BENCH_SEGMENT:-90} ;;
    conv) budget=${BUDGET_BENCH_CONV:-60} ;;
    csrc) budget=${BUDGET_BENCH_CSRC:-40} ;;
    models) budget=${BUDGET_BENCH_MODELS:-60} ;;
    *) budget=${BUDGET_BENCH_OTHER:-30} ;;
  esac
  EXPECTED_JSON+=("bench-$file.json")
  step "bench-$file" "$budget" python3 -m pytest "$path" --benchmark-only -k "$BENCH_SELECT" -q -s -rs \
    -p no:cacheprovider --benchmark-json="$OUT/bench-$file.json"
done
# A rerun of a part (GPU_SUITE_TEST_FILES or GPU_SUITE_BENCH_FILES set) runs no optional step unless its switch is 1.
OPTIONAL_DEFAULT=1
if [[ -n ${GPU_SUITE_TEST_FILES+set}${GPU_SUITE_BENCH_FILES+set} ]]; then OPTIONAL_DEFAULT=0; fi
optional_step() {  # optional_step NAME SWITCH BUDGET COMMAND...: skipped in a dry run or when $SWITCH is 0
  local name=$1 switch=$2 budget=$3
  shift 3
  if [[ $GPU_SUITE_DRY_RUN == 1 || ${!switch:-$OPTIONAL_DEFAULT} == 0 ]]; then
    echo "===== $name: skipped (dry run or $switch=0) =====" | tee -a "$LOG"
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
  else
    step "$name" "$budget" "$@"
  fi
}
# Into suite.log only. Where a HierTCN training step's time goes (launches, syncs, top ops):
optional_step profile GPU_SUITE_PROFILE "${BUDGET_PROFILE:-60}" python3 scripts/profile_train_step.py
# HierTCN vs GRU4Rec at the default batch (32 lanes / users, the official code's) and at 8x that:
# GPU steps are launch-bound at 32.
optional_step bench-32 GPU_SUITE_BENCH_32 "${BUDGET_BENCH_32:-60}" python3 -m hiertcn bench --device cuda \
  --tokens 65536 --steps 10 --quiet --out /tmp/hiertcn-bench-32
optional_step bench-256 GPU_SUITE_BENCH_256 "${BUDGET_BENCH_256:-90}" python3 -m hiertcn bench --device cuda \
  --tokens 65536 --steps 10 --n-queues 256 --batch-users 256 --quiet --out /tmp/hiertcn-bench-256
# Real training at the defaults: a new batch every step, moved from the loader thread's host batch. The
# metrics' interactions_per_s (training time only) of the two models are printed at the end.
optional_step train-32 GPU_SUITE_TRAIN_32 "${BUDGET_TRAIN_32:-90}" bash -c 'python3 -m hiertcn compare \
  --models hiertcn,gru4rec --epochs 2 --device cuda --quiet --overwrite --out /tmp/hiertcn-train-32 \
  && python3 -m hiertcn compare --models hiertcn --precision bf16 --epochs 2 --device cuda --quiet --overwrite \
  --out /tmp/hiertcn-train-32-bf16 \
  && grep -H "interactions_per_s\|\"mrr\"" /tmp/hiertcn-train-32*/*/metrics.json'
# What a CUDA graph of the whole step would buy at 32 lanes (a diagnostic: the training path stays eager).
optional_step graph-probe GPU_SUITE_GRAPH_PROBE "${BUDGET_GRAPH_PROBE:-45}" python3 scripts/graph_step_probe.py
# The kernels' launch-choice sweep and the split conv backward candidate (last: it takes what is left).
read -ra TUNE_ARGS <<< "${GPU_SUITE_TUNE_ARGS:-}"
optional_step tune GPU_SUITE_TUNE "${BUDGET_TUNE:-240}" python3 scripts/tune_gpu_kernels.py "${TUNE_ARGS[@]}"

for path in tests/benchmarks/test_*.py; do  # GPU benchmarks missing from the default list: say so
  file=$(basename "$path" .py)
  file=${file#test_bench_}
  if [[ -z ${GPU_SUITE_BENCH_FILES+set} ]] && grep -qE 'mark\.cuda' "$path" \
    && [[ " ${BENCH_FILES[*]} " != *" $file "* ]]; then
    echo "WARNING: $path has GPU benchmarks but is not in BENCH_FILES (not run; \$OUT holds at most 8 files)" \
      | tee -a "$LOG"
  fi
done

finish 0
