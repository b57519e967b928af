from questkern.profiling.nvtx import annotate, nvtx_enabled, set_nvtx_enabled

__all__ = ["annotate", "nvtx_enabled", "set_nvtx_enabled"]
