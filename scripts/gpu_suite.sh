#!/usr/bin/env bash
# Everything that needs a GPU, in one command (about 9 minutes at most), for the lent GPU machine:
#   bash scripts/gpu_suite.sh            # from the repository root; results go to $OUT (default ./gpu-out)
# Steps: device info, the cuda-marked tests, then the GPU benchmarks one file at a time (a step that
# fails or runs past its budget is recorded and the next step still runs). Writes into $OUT:
#   suite.log (everything printed), meta.json (date, device, commit, versions), steps.tsv (step, exit
#   status, seconds), cuda-tests.xml (JUnit), bench-<file>.json (pytest-benchmark, one per file).
# Turn the returned folder into benchmarks/results/ with scripts/record_gpu_results.py.
# The commit comes from git when the checkout has .git, else from $HIERTCN_COMMIT.
# Budgets (seconds) can be changed: SUITE_BUDGET (the whole suite, default 540: no step starts or
# runs past it), BUDGET_TESTS, BUDGET_BENCH_SEGMENT, BUDGET_BENCH_CONV, BUDGET_BENCH_CSRC, BUDGET_BENCH_OTHER
# (each other file).
set -u
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
export PYTHONPATH=. PYTHONUNBUFFERED=1
LOG="$OUT/suite.log"
: > "$LOG"
printf 'step\texit_status\tseconds\n' > "$OUT/steps.tsv"
# The -k expression that selects every cuda-marked benchmark by name (they are named *cuda* or *gpu*).
BENCH_SELECT="cuda or gpu"

SUITE_START=$(date +%s)
step() {  # step NAME BUDGET_SECONDS COMMAND...: SIGINT at the budget (pytest still writes its reports)
  local name=$1 budget=$2 start rc left
  shift 2
  left=$(( ${SUITE_BUDGET:-540} - ($(date +%s) - SUITE_START) - 25 ))  # 25: the kill grace + slack
  if (( left < budget )); then budget=$left; fi
  if (( budget <= 0 )); then
    echo "===== $name: skipped, the suite's ${SUITE_BUDGET:-540}s are spent =====" | tee -a "$LOG"
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
    return
  fi
  echo "===== $name (budget ${budget}s): $* =====" | tee -a "$LOG"
  start=$(date +%s)
  timeout -s INT -k 20 "$budget" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$OUT/steps.tsv"
  echo "===== $name: exit status $rc =====" | tee -a "$LOG"
}

device_info() {  # nvidia-smi, then meta.json: what the record script names the results folder after
  nvidia-smi
  python3 - "$OUT/meta.json" <<'PY'
import datetime, json, os, platform, subprocess, sys
import torch
def version(module):
    try:
        return __import__(module).__version__
    except Exception as exc:  # a missing package is information, not an error
        return f"unavailable ({type(exc).__name__})"
try:
    commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
except Exception:
    commit = os.environ.get("HIERTCN_COMMIT", "unknown")
meta = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device",
    "commit": commit, "python": platform.python_version(), "torch": torch.__version__,
    "torch_cuda": torch.version.cuda, "triton": version("triton"), "cupy": version("cupy"),
    "numba": version("numba"),
}
print(json.dumps(meta, indent=1))
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=1)
PY
}
export -f device_info
export OUT LOG

step device-info 60 bash -c device_info

step cuda-tests "${BUDGET_TESTS:-150}" python3 -m pytest -m cuda -q -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml"

# Every benchmark file, each in its own step and budget (files with no GPU benchmark exit at once).
for path in tests/benchmarks/test_*.py; do
  file=$(basename "$path" .py)
  file=${file#test_bench_}
  case $file in
    segment) budget=${BUDGET_BENCH_SEGMENT:-180} ;;
    conv) budget=${BUDGET_BENCH_CONV:-90} ;;
    csrc) budget=${BUDGET_BENCH_CSRC:-90} ;;
    *) budget=${BUDGET_BENCH_OTHER:-30} ;;
  esac
  step "bench-$file" "$budget" python3 -m pytest "$path" --benchmark-only -k "$BENCH_SELECT" -q -s \
    -p no:cacheprovider --benchmark-json="$OUT/bench-$file.json"
done

echo "===== done: $OUT =====" | tee -a "$LOG"
cat "$OUT/steps.tsv" | tee -a "$LOG"
