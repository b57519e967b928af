from questkern.ops.select.kernel import select_pages, select_workspace
from questkern.ops.select.naive import page_scores_ref, select_pages_ref, topk_pages_ref

__all__ = ["select_pages", "select_workspace", "select_pages_ref", "page_scores_ref", "topk_pages_ref"]
