"""GPU check of float8_e5m2 page metadata (issue 7): the build and append kernels round
kmin down / kmax up exactly as the reference (``round_safe``), on keys spanning e5m2's
range and past it (+-inf), and the bound never tightens. Prints one line per case and
exits 1 on any mismatch. ``python3 scripts/gpu/check_fp8_meta.py``
"""

import sys

import torch

from questkern.ops.metadata import append_decode, metadata_build, metadata_build_ref

dev = torch.device("cuda")
bad = 0
for dtype in (torch.bfloat16, torch.float16):
    g = torch.Generator(device=dev).manual_seed(0)
    P, H, PS, D = 4096, 8, 16, 128
    mag = 10 ** torch.randint(-8, 6, (P, H, PS, D), generator=g, device=dev).float()
    k = torch.randn(P, H, PS, D, generator=g, device=dev) * mag
    if dtype == torch.float16:
        k = k.clamp(-65504, 65504)
    k = k.to(dtype)
    table = torch.randperm(P, device=dev, generator=g).int().view(8, -1)  # [8, 512]
    lens = torch.randint(1, 512 * PS + 1, (8,), generator=g, device=dev).int()
    kmin = torch.zeros(P, H, D, dtype=torch.float8_e5m2, device=dev)
    kmax = torch.zeros_like(kmin)
    metadata_build(k, kmin, kmax, table, lens)
    rmin, rmax = metadata_build_ref(k, table, lens, torch.zeros_like(kmin), torch.zeros_like(kmax))
    emin, emax = metadata_build_ref(k, table, lens)
    used = torch.cat([table[b, : -(-int(n) // PS)] for b, n in enumerate(lens.tolist())]).long()
    same = torch.equal(kmin[used].float(), rmin[used].float()) and torch.equal(kmax[used].float(), rmax[used].float())
    safe = bool((kmin[used].float() <= emin[used]).all() and (kmax[used].float() >= emax[used]).all())
    n_inf = int(torch.isinf(kmax[used].float()).sum())
    # append: 40 decode tokens per sequence on top of the build, then compare with a rebuild
    lens2 = lens.clone().clamp(max=512 * PS - 40)
    kmin2 = torch.zeros_like(kmin)
    kmax2 = torch.zeros_like(kmin)
    metadata_build(k, kmin2, kmax2, table, lens2)
    v = torch.zeros_like(k)
    for _ in range(40):
        kn = (
            torch.randn(8, H, D, generator=g, device=dev)
            * 10 ** torch.randint(-8, 6, (8, H, D), generator=g, device=dev).float()
        )
        kn = kn.clamp(-65504, 65504).to(dtype)
        append_decode(kn, kn, k, v, kmin2, kmax2, table, lens2)
    amin, amax = metadata_build_ref(k, table, lens2, torch.zeros_like(kmin), torch.zeros_like(kmax))
    used2 = torch.cat([table[b, : -(-int(n) // PS)] for b, n in enumerate(lens2.tolist())]).long()
    same_app = torch.equal(kmin2[used2].float(), amin[used2].float()) and torch.equal(
        kmax2[used2].float(), amax[used2].float()
    )
    ok = same and safe and same_app
    bad += not ok
    print(
        f"{torch.cuda.get_device_name()} {dtype}: build == reference {same}, bound safe {safe} ({n_inf} kmax = +inf), "
        f"append == rebuild {same_app} -> {'OK' if ok else 'MISMATCH'}"
    )
sys.exit(1 if bad else 0)
