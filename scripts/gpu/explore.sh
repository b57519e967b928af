#!/usr/bin/env bash
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-}
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m questkern bench --seq 32k,128k --batch 1 --heads 32/32,32/8 --out "$OUT/bench.csv" 2>&1 | grep -v "^ *%" | tail -8
python3 scripts/gpu/explore.py 2>&1 | tail -12
cat > /tmp/ncu_wl.py <<'PY'
import torch, questkern
from questkern.bench.core import Case, build_cache
c = Case(1, 32, 8, 128, torch.bfloat16, 32768, 16, 2048)
cache = build_cache(c, torch.device("cuda"))
q = torch.randn(1, 32, 128, device="cuda", dtype=torch.bfloat16)
w = questkern.QuestDecode(2048); w.plan(cache, num_q_heads=32)
for _ in range(3): w.run(q)
torch.cuda.synchronize()
PY
timeout 240 ncu --kernel-name regex:"_select|_decode_split|_combine" --launch-skip 3 --launch-count 3 --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --csv --page details python3 /tmp/ncu_wl.py > "$OUT/ncu_select_decode.csv" 2> "$OUT/ncu.err"
python3 - "$OUT/ncu_select_decode.csv" <<'PY'
import sys, pandas as pd
df = pd.read_csv(sys.argv[1])
keep = ["Duration", "DRAM Throughput", "Memory Throughput", "Registers Per Thread", "Achieved Occupancy", "Grid Size", "Block Size", "Warp Cycles Per Issued Instruction", "Theoretical Occupancy", "Dynamic Shared Memory Per Block", "Static Shared Memory Per Block"]
df = df[df["Metric Name"].isin(keep)]
print(df.pivot_table(index=["ID", "Kernel Name"], columns="Metric Name", values="Metric Value", aggfunc="first").to_string())
PY
