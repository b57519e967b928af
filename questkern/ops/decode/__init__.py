from questkern.ops.decode.kernel import decode_workspace, paged_decode
from questkern.ops.decode.naive import paged_attention_ref

__all__ = ["paged_decode", "decode_workspace", "paged_attention_ref"]
