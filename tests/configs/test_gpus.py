"""GPU name normalization and the --gpu check, against the strings devices really report."""

import pytest

from questkern.configs.gpus import CPU_KEY, check_gpu_arg, gpu_family, normalize_gpu_name

# (torch.cuda.get_device_name(), normalized key, family)
DEVICES = [
    ("NVIDIA A100-SXM4-40GB", "nvidia-a100-sxm4-40gb", "a100"),
    ("NVIDIA A100-SXM4-80GB", "nvidia-a100-sxm4-80gb", "a100"),
    ("NVIDIA A100-PCIE-40GB", "nvidia-a100-pcie-40gb", "a100"),
    ("NVIDIA A100 80GB PCIe", "nvidia-a100-80gb-pcie", "a100"),
    ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3", "h100"),
    ("NVIDIA H100 PCIe", "nvidia-h100-pcie", "h100"),
    ("NVIDIA H100 NVL", "nvidia-h100-nvl", "h100"),
    ("NVIDIA H200", "nvidia-h200", "h200"),
    ("NVIDIA H200 NVL", "nvidia-h200-nvl", "h200"),
    ("NVIDIA GH200 480GB", "nvidia-gh200-480gb", "gh200"),
    ("NVIDIA H800", "nvidia-h800", "h800"),
    ("NVIDIA H20", "nvidia-h20", "h20"),
    ("NVIDIA B200", "nvidia-b200", "b200"),
    ("NVIDIA L40S", "nvidia-l40s", "l40s"),
    ("NVIDIA L40", "nvidia-l40", "l40"),
    ("NVIDIA L4", "nvidia-l4", "l4"),
    ("NVIDIA A10G", "nvidia-a10g", "a10g"),
    ("NVIDIA A10", "nvidia-a10", "a10"),
    ("NVIDIA RTX A6000", "nvidia-rtx-a6000", "a6000"),
    ("NVIDIA RTX 6000 Ada Generation", "nvidia-rtx-6000-ada-generation", "rtx6000ada"),
    ("NVIDIA GeForce RTX 4090", "nvidia-geforce-rtx-4090", "4090"),
    ("NVIDIA GeForce RTX 3090", "nvidia-geforce-rtx-3090", "3090"),
    ("Tesla V100-SXM2-16GB", "tesla-v100-sxm2-16gb", "v100"),
    ("Tesla T4", "tesla-t4", "t4"),
    ("AMD Instinct MI300X", "amd-instinct-mi300x", "mi300x"),
]


@pytest.mark.parametrize("name,key,family", DEVICES)
def test_normalize_and_family(name, key, family):
    assert normalize_gpu_name(name) == key
    assert gpu_family(name) == family
    assert gpu_family(key) == family  # idempotent on keys


def test_unknown_and_bad_names():
    assert gpu_family("Some Future GPU 9000") is None
    assert normalize_gpu_name("  NVIDIA  H100  ") == "nvidia-h100"
    for bad in ("", "   ", None, 3):
        with pytest.raises(ValueError, match="GPU name must be a non-empty string"):
            normalize_gpu_name(bad)


@pytest.mark.parametrize("arg", ["h100", "H100", "nvidia-h100-80gb-hbm3", "NVIDIA H100 80GB HBM3"])
def test_gpu_arg_matches(arg):
    assert check_gpu_arg(arg, "NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_gpu_arg_aliases():
    assert check_gpu_arg("rtx4090", "NVIDIA GeForce RTX 4090") == "nvidia-geforce-rtx-4090"
    assert check_gpu_arg("cpu", CPU_KEY) == CPU_KEY
    assert check_gpu_arg("a100", "NVIDIA A100 80GB PCIe") == "nvidia-a100-80gb-pcie"


def test_gpu_arg_mismatch_names_both():
    with pytest.raises(ValueError) as e:
        check_gpu_arg("a100", "NVIDIA H100 80GB HBM3")
    msg = str(e.value)
    assert "--gpu 'a100'" in msg and "NVIDIA H100 80GB HBM3" in msg and "family h100" in msg and "--dry-run" in msg


def test_gpu_arg_other_variant_of_same_family_is_a_mismatch():
    with pytest.raises(ValueError, match="nvidia-h100-pcie.*NVIDIA H100 80GB HBM3"):
        check_gpu_arg("nvidia-h100-pcie", "NVIDIA H100 80GB HBM3")


def test_gpu_arg_unknown_family():
    with pytest.raises(ValueError, match="not a known GPU family.*known families: .*h100"):
        check_gpu_arg("voodoo5", "NVIDIA H100 80GB HBM3")


def test_gpu_arg_on_cpu_machine():
    with pytest.raises(ValueError, match="family h100.*'cpu-interpreter'"):
        check_gpu_arg("h100", CPU_KEY)
