"""The varied-text quality suite: its prompts, and a small slice end to end on SmolLM2-135M."""

from __future__ import annotations

import pytest

from questkern.quality import suite as S
from questkern.quality.filler import sentence_bank, sentences
from questkern.quality.model import load_model
from questkern.quality.selection import Variant


@pytest.fixture(scope="module")
def smollm():
    return load_model()


def test_filler_bank_is_varied_without_digits_or_key_words():
    bank = sentence_bank()
    assert len(bank) == len(set(bank)) >= 10000
    assert not any(c.isdigit() for s in bank for c in s)
    words = {w.strip(".").lower() for s in bank for w in s.split()}
    assert not words & set(S.KEY_WORDS)
    it = sentences(3)
    first = [next(it) for _ in range(600)]
    assert len(set(first)) == 600  # an 8K haystack repeats no sentence


@pytest.mark.parametrize("task", S.TASKS)
def test_prompts_fit_and_hold_their_needles(smollm, task):
    _, tok = smollm
    hs = S.build(task, tok, 1024, 5)
    for q in hs.questions:
        assert 900 <= len(hs.ids) + len(q.ids) <= 1024
        needle = tok.decode([hs.ids[i] for i in q.needle_tokens])
        if task == "cwe":
            assert set(needle.split()) <= set(q.answer)
        else:
            assert all(a in needle for a in q.answer[:1])
        if q.exact:
            assert tok.decode(q.answer_ids).strip() == q.answer[0]
    if task == "niah_multikey":
        assert len({q.answer[0] for q in hs.questions}) == 4
        assert [q.depth for q in hs.questions] == sorted(q.depth for q in hs.questions)
        assert hs.ids.count(tok(" special", add_special_tokens=False)["input_ids"][0]) >= 4
    if task == "vt":
        text = tok.decode(hs.ids)
        assert all(f"VAR {n}" in text for n in hs.questions[0].answer)


def test_depths_spread_over_the_context():
    d = sorted(S.spread_depth(s) for s in range(40))
    assert d[0] < 0.1 and d[-1] > 0.9 and max(b - a for a, b in zip(d, d[1:])) < 0.08


def test_slice_end_to_end(smollm):
    """One short haystack per exact task: dense answers, a budget covering the context
    reproduces dense, a tiny budget is scored per variant, diagnostics find the needle."""
    model, tok = smollm
    covering = Variant(2048, name="covering")
    tiny = Variant(32, page_size=8)
    rows, diag = [], []
    for task in S.EXACT_TASKS:
        hs = S.build(task, tok, 640, 1)
        r, d = S.run_haystack(
            model, tok, hs, [covering, tiny], diag_variants=[tiny], skip_if_dense_wrong=False, log=lambda m: None
        )
        rows += r
        diag += d
    assert len(rows) == 5 * 3  # 1 + 4 questions, 3 variants each
    by = {(r["haystack"], r["question"], r["variant"]): r for r in rows}
    for (h, qi, v), r in by.items():
        if v == "dense":
            assert r["correct"] == 1, r  # the 135M model answers at 640 tokens
            assert by[(h, qi, "covering")]["generated"] == r["generated"]
    assert {r["tokens_ok"] for r in rows if r["variant"] == "dense"} == {6}
    assert len(diag) == 5 * 30 * 9 and all(0 <= x["kept[p8 b32 shared-sum]"] <= 1 for x in diag)
    top = max(diag, key=lambda x: x["needle_mass"])
    assert top["needle_mass"] > 0.3 and top["layer"] >= 2  # some retrieval head reads the value
    assert model.config._attn_implementation == "questkern_suite"


def test_score_text_counts_items():
    assert S.score_text("they are: ABCD, EFGH and 12345.", ["ABCD", "XYZW", "12345"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="task"):
        S.build("nope", None, 100, 0)


def test_selection_reuse_end_to_end_counts_selections(smollm):
    """Through the model: every-step rows select at every (sparse layer, KV head, step); every4 rows
    select at step 0, at a page crossing and 4 steps after the last selection; each run starts over."""
    model, tok = smollm
    every, reuse = Variant(32, page_size=8), Variant(32, page_size=8, reselect_every=4)
    hs = S.build("niah_single", tok, 640, 1)
    rows, _ = S.run_haystack(
        model, tok, hs, [every, reuse, every.with_(sub_page=4)], skip_if_dense_wrong=False, log=lambda m: None
    )
    by = {r["variant"]: r for r in rows}
    per_step = (model.config.num_hidden_layers - 2) * model.config.num_key_value_heads
    assert by["dense"]["steps"] == 0 == by["dense"]["selections"]
    assert by[every.name]["selections"] == by[every.name]["steps"] > 0
    r = by[reuse.name]
    assert r["reselect_every"] == 4 and r["steps"] % per_step == 0 and r["steps"] > 0
    last, want = None, 0
    for t in range(r["steps"] // per_step):
        n = -(-(r["length"] + t) // 8)
        if last is None or n != last[1] or t - last[0] >= 4:
            last, want = (t, n), want + 1
    assert r["selections"] == want * per_step < r["steps"]
