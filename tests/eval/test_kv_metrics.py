"""KV-reuse metrics on cases small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from memos_lab.eval.kv import (
    ModelDims,
    common_prefix_len,
    next_token_kl,
    perfect_prefix_reuse,
    prefill_flops,
    top1_agrees,
)

DIMS = ModelDims(layers=1, hidden=2, heads=1, kv_heads=1, head_dim=2, intermediate=3, vocab=5)


def test_linear_params_of_a_gated_llama_layer() -> None:
    # q, o: 2*2 each; k, v: 2*2 each; gate, up, down: 2*3 each
    assert DIMS.linear_params_per_layer == 4 + 4 + 4 + 4 + 18


def test_prefill_flops_counts_weights_attention_and_one_lm_head() -> None:
    # 3 tokens from scratch: 2*34*3 linear + 4*1*2*(1+2+3) attention + 2*2*5 head
    assert prefill_flops(DIMS, 0, 3) == 204 + 48 + 20
    # the last token only, with 2 cached: 2*34 + 4*2*3 + 20
    assert prefill_flops(DIMS, 2, 3) == 68 + 24 + 20
    with pytest.raises(ValueError):
        prefill_flops(DIMS, 3, 3)


def test_perfect_prefix_reuse_takes_the_best_earlier_prefix_but_never_the_whole_prompt() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2 and common_prefix_len([1], [1, 2]) == 1
    prompts = [[1, 2, 3], [1, 2, 3, 4, 5], [9, 9], [1, 2, 3, 4, 5]]
    assert perfect_prefix_reuse(prompts) == [0, 3, 0, 4]
    assert perfect_prefix_reuse([[7, 8, 1]], cached=[[7, 8]]) == [2]


def test_next_token_kl_is_zero_for_equal_logits_and_the_hand_computed_value_otherwise() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0])
    assert next_token_kl(logits, logits + 5.0) == pytest.approx(0.0, abs=1e-12)  # a shift is the same distribution
    # p = (1/2, 1/2), q = (1/4, 3/4): KL = 1/2 log2 2 + 1/2 log2 (2/3) bits
    p, q = torch.tensor([0.0, 0.0]), torch.tensor([0.0, math.log(3.0)])
    assert next_token_kl(p, q) == pytest.approx(0.5 + 0.5 * math.log2(2 / 3))
    assert next_token_kl(q, p) != pytest.approx(next_token_kl(p, q))  # not symmetric: the reference comes first


def test_top1_agreement_compares_the_argmax_only() -> None:
    assert top1_agrees(torch.tensor([0.0, 3.0, 1.0]), torch.tensor([-5.0, 0.1, 0.0]))
    assert not top1_agrees(torch.tensor([0.0, 3.0, 1.0]), torch.tensor([0.0, 1.0, 3.0]))
