from questkern.ops.metadata.kernel import append_decode, metadata_build
from questkern.ops.metadata.naive import metadata_build_ref

__all__ = ["metadata_build", "append_decode", "metadata_build_ref"]
