#!/usr/bin/env bash
# Nsight Compute on the four kernels of one Quest step (tile select, merge, decode, combine),
# 32K context, batch 1, bf16, d=128, budget 2048, page 16; MHA 32/32 then GQA 32/8.
set -uo pipefail
export PYTHONPATH=.:${PYTHONPATH:-}
OUT=${OUT:-out}; mkdir -p "$OUT"
cat > /tmp/ncu_wl.py <<'PY'
import sys, torch, questkern
from questkern.bench.core import Case, build_cache
hq, hkv = int(sys.argv[1]), int(sys.argv[2])
c = Case(1, hq, hkv, 128, torch.bfloat16, 32768, 16, 2048)
cache = build_cache(c, torch.device("cuda"))
q = torch.randn(1, hq, 128, device="cuda", dtype=torch.bfloat16)
w = questkern.QuestDecode(2048); p = w.plan(cache, num_q_heads=hq); print(p, file=sys.stderr)
for _ in range(2): w.run(q)
torch.cuda.synchronize()
PY
for h in "32 32" "32 8"; do
  set -- $h
  timeout 100 ncu --clock-control none --kernel-name regex:"_select|_decode_split|_combine" --launch-skip 4 --launch-count 4 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy --section WarpStateStats \
    --csv --page details python3 /tmp/ncu_wl.py $1 $2 > "$OUT/ncu_step_$1_$2.csv" 2> "$OUT/ncu_step_$1_$2.err"
done
python3 - "$OUT" <<'PY'
import sys, io, glob, pandas as pd
keep = ["Duration", "DRAM Throughput", "Registers Per Thread", "Achieved Occupancy", "Grid Size", "Block Size",
        "Warp Cycles Per Issued Instruction", "Theoretical Occupancy", "L2 Hit Rate", "Mem Busy", "Max Bandwidth"]
for f in sorted(glob.glob(sys.argv[1] + "/ncu_step_*.csv")):
    txt = open(f).read(); i = txt.find('"ID"')
    if i < 0: print(f, "no data"); continue
    df = pd.read_csv(io.StringIO(txt[i:]), thousands=",")
    df = df[df["Metric Name"].isin(keep)]
    print(f); print(df.pivot_table(index=["ID", "Kernel Name"], columns="Metric Name", values="Metric Value", aggfunc="first").T.to_string())
PY
