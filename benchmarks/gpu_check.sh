#!/usr/bin/env bash
# The four scenarios at full size on one CUDA device, synchronised timing, 8 minutes in all.
#
#   bash benchmarks/gpu_check.sh                      # writes benchmarks/results/gpu_check.json
#   bash benchmarks/gpu_check.sh --budget 300 --out /tmp/gpu.json
#   bash benchmarks/gpu_check.sh --cpu-dry-run        # the same driver on the CPU, tiny size, 2 minutes
#
# Options of this script: --budget SECONDS (everything, install included; default 480, 150 with --cpu-dry-run),
# --python PATH (default: python). Every other option goes to benchmarks/gpu_check.py (see its --help).
# unlearnkit is installed (pip install -e .) only if it cannot be imported; torch is never reinstalled when it
# already sees a CUDA device. The driver writes its JSON after every scenario, so a run stopped by the budget
# keeps the scenarios it finished.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

python="${PYTHON:-python}"
budget=""
dry=0
passed=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --budget) budget="$2"; shift 2 ;;
    --budget=*) budget="${1#*=}"; shift ;;
    --python) python="$2"; shift 2 ;;
    --cpu-dry-run) dry=1; passed+=("$1"); shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) passed+=("$1"); shift ;;
  esac
done
if [[ -z "$budget" ]]; then budget=$(( dry ? 150 : 480 )); fi
if ! [[ "$budget" =~ ^[0-9]+$ ]] || (( budget < 30 )); then
  echo "gpu_check: --budget must be a whole number of seconds >= 30, got '$budget'." >&2; exit 2
fi
began=$SECONDS

echo "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L || true; else echo "nvidia-smi: not found"; fi
echo "cpus: $(nproc --all 2>/dev/null || echo '?')"
if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "gpu_check: torch is not installed; installing torch==2.13.0 and unlearnkit (needs a package index)."
  "$python" -m pip install -q "torch==2.13.0" -e "$root"
fi
"$python" -c 'import torch; print("torch", torch.__version__, "| CUDA build", torch.version.cuda,
"| CUDA available", torch.cuda.is_available(), "| devices", torch.cuda.device_count())'
cuda=$("$python" -c 'import torch; print(int(torch.cuda.is_available()))')
if (( ! dry )) && [[ "$cuda" != 1 ]]; then
  echo "gpu_check: torch sees no CUDA device, so there is nothing to check; run where a GPU is (and a CUDA build" \
       "of torch), or pass --cpu-dry-run to test this script on the CPU." >&2
  exit 2
fi
if ! "$python" -c 'import unlearnkit' 2>/dev/null; then
  echo "gpu_check: installing unlearnkit (pip install -e .; the installed torch is kept)"
  "$python" -m pip install -q -e "$root" || {
    echo "gpu_check: pip install failed; using the source tree (PYTHONPATH=src)"; export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"; }
fi

left=$(( budget - (SECONDS - began) ))
# The driver plans within its own budget and leaves 20 s for writing; timeout stops it at the hard limit.
driver_budget=$(( left - 20 ))
if (( driver_budget < 1 )); then
  echo "gpu_check: the installation used the budget ($budget s); nothing left to run." >&2; exit 3
fi
echo "== scenarios (budget ${left} s, driver plans for ${driver_budget} s)"
status=0
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" timeout --signal=TERM --kill-after=10 "$left" \
  "$python" "$here/gpu_check.py" --budget "$driver_budget" ${passed[@]+"${passed[@]}"} || status=$?
if (( status == 124 || status == 137 )); then
  echo "gpu_check: stopped at the ${budget} s budget; the JSON holds the scenarios that finished." >&2
fi
echo "gpu_check: ${SECONDS}s in all (exit ${status})"
exit "$status"
