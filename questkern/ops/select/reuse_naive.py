"""Reference of selection reuse across decode steps (``QuestDecode(reselect_every=, drift_threshold=)``).

Selection state is kept per (sequence, KV head); the rows of one KV head (one row for
``shared``, the group's query heads for ``per_head``) select together. At a step the
rows of KV head ``h`` of sequence ``b`` **select afresh** when any of:

1. the sequence is new to the plan: no step since ``plan()``; its length is shorter than
   at the previous step or more than one token longer; its first physical page changed;
   or :meth:`QuestDecode.reselect` named it — a new or re-admitted sequence always selects
   on its first step;
2. its last page changed since the last selection (``ceil(seq_len / page_size)`` differs:
   the context crossed into a new page, which is always attended);
3. ``reselect_every`` steps have passed since the last selection (selects at step 0,
   reuses at steps 1 .. N-1, selects at step N; ``None`` = no age limit; ``1`` = every
   step, today's rule);
4. with ``drift_threshold``: the cosine similarity of the group's current queries
   (concatenated, ``[G * D]`` float32) to those of the last selection is below the
   threshold (NaN, e.g. a zero or non-finite query, counts as drifted).

Otherwise the rows keep the page ids of the last selection (logical ids, the current
last page among them by rule 2); the decode attends to them up to the current token.
A sequence length equal to the previous step's (a replayed step) counts as continuing.
"""

from __future__ import annotations

import torch


class ReuseStateRef:
    """Host-side mirror of the reuse state of one plan (float32, any device)."""

    def __init__(
        self, batch: int, num_kv_heads: int, page_size: int, reselect_every: int | None, drift_threshold: float | None
    ):
        self.page_size, self.every, self.threshold = page_size, reselect_every, drift_threshold
        self.last_len = torch.full((batch, num_kv_heads), -1, dtype=torch.long)
        self.first = torch.zeros(batch, num_kv_heads, dtype=torch.long)
        self.pages = torch.zeros(batch, num_kv_heads, dtype=torch.long)
        self.age = torch.zeros(batch, num_kv_heads, dtype=torch.long)
        self.force = torch.zeros(batch, num_kv_heads, dtype=torch.bool)
        self.q_sel: torch.Tensor | None = None
        self.selected: torch.Tensor | None = None  # [B, rows, K] the rows in use

    def gate(self, q: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor) -> torch.Tensor:
        """[B, Hkv] bool: which KV heads select at this step (and update the state)."""
        B, Hkv = self.last_len.shape
        Hq, D = q.shape[1], q.shape[2]
        G = Hq // Hkv
        lens = seq_lens.long().cpu()[:, None].expand(B, Hkv)
        first = page_table[:, :1].long().cpu().expand(B, Hkv)
        pages = (lens + self.page_size - 1) // self.page_size
        pages = pages.clamp(max=page_table.shape[1])
        new = (
            (self.last_len < 0)
            | (lens < self.last_len)
            | (lens > self.last_len + 1)
            | (first != self.first)
            | self.force
        )
        go = new | (pages != self.pages)
        if self.every is not None:
            go |= self.age + 1 >= self.every
        qg = q.float().cpu().reshape(B, Hkv, G * D)
        if self.threshold is not None:
            if self.q_sel is None:
                self.q_sel = torch.zeros(B, Hkv, G * D)
            den = qg.norm(dim=-1) * self.q_sel.norm(dim=-1)
            cos = (qg * self.q_sel).sum(-1) / den.where(den > 0, float("nan"))
            go |= ~(cos >= self.threshold)  # NaN (zero or non-finite norms) counts as drifted
            self.q_sel = torch.where(go[..., None], qg, self.q_sel)
        self.last_len, self.first, self.pages = lens.clone(), first.clone(), pages.clone()
        self.age = torch.where(go, 0, self.age + 1)
        self.force.zero_()
        return go

    def step(
        self, q: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor, fresh: torch.Tensor
    ) -> torch.Tensor:
        """The rows used at this step: ``fresh`` [B, rows, K] (every-step selection) where
        the KV head selects, the stored rows elsewhere."""
        go = self.gate(q, page_table, seq_lens)  # [B, Hkv]
        B, rows, _ = fresh.shape
        go_rows = go.repeat_interleave(rows // go.shape[1], dim=1)[..., None].to(fresh.device)  # [B, rows, 1]
        self.selected = fresh.clone() if self.selected is None else torch.where(go_rows, fresh, self.selected)
        return self.selected


__all__ = ["ReuseStateRef"]
