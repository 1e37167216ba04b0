"""The ESTIMATED H100 memory plan (rapid/memory_plan.py) keeps its arithmetic: hand-computed totals for
Qwen2.5-1.5B, parameter counts equal transformers' own models, and the activation formula equals the bytes autograd
really saves in a (tiny) Qwen2 stack under bf16 autocast, so a change in transformers' layers cannot rot it silently."""

import pytest
import torch

from rapid import memory_plan as plan

# Qwen2.5-1.5B by hand: embedding 151936·1536 = 233,373,696; per layer q 1536·1536 + 1536, k and v 1536·256 + 256
# each, o 1536·1536, MLP 3·1536·8960, two norms 2·1536 → 46,797,824; × 28 = 1,310,339,072; final norm 1536.
QWEN_1_5B_PARAMS = 233_373_696 + 1_310_339_072 + 1_536
# 0.5B: 151936·896 = 136,134,656; per layer 803,712 + 2·114,816 + 802,816 + 13,074,432 + 1,792 = 14,912,384 (× 24).
QWEN_0_5B_PARAMS = 136_134_656 + 24 * 14_912_384 + 896


def test_hand_computed_totals_for_qwen_1_5b():
    s = plan.QWEN25_1_5B
    assert plan.param_count(s) == QWEN_1_5B_PARAMS == 1_543_714_304
    assert plan.param_count(plan.QWEN25_0_5B) == QWEN_0_5B_PARAMS == 494_032_768
    p = plan.plan(s, micro_batch_tokens=8192)
    c = p["components"]
    assert c["master"] + c["grads"] + c["adam"] == 16 * QWEN_1_5B_PARAMS == 24_699_428_864     # 16 bytes/param
    # 30h + 4·kv + 8i + 4·heads + 8 = 46,080 + 1,024 + 71,680 + 48 + 8
    assert plan.layer_activation_bytes(s) == 118_840
    assert plan.kv_bytes_per_token(s) == 2 * 28 * 256 * 2 == 28_672
    assert c["activations"] == 8192 * plan.activation_bytes_per_token(s, False)
    assert p["train_peak"] == sum(c[k] for k in ("master", "grads", "adam", "bf16_copies", "activations",
                                                 "lm_head_transient", "cuda_context", "vllm_asleep"))
    assert p["gen_peak"] == c["master"] + c["adam"] + c["cuda_context"] + c["vllm_awake"]
    assert p["label"].startswith("ESTIMATE")


@pytest.mark.parametrize("shape", [plan.QWEN25_0_5B, plan.QWEN25_1_5B], ids=lambda s: s.name)
def test_param_count_equals_transformers(shape):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):                 # shapes only: no memory, no init
        model = AutoModelForCausalLM.from_config(plan.qwen2_config(shape))
    assert sum(p.numel() for p in model.parameters()) == plan.param_count(shape)


def test_largest_budget_is_the_boundary():
    s = plan.QWEN25_1_5B
    for ckpt in (False, True):
        best = plan.max_micro_batch_tokens(s, ckpt)
        assert plan.plan(s, best, ckpt)["train_peak"] <= plan.plan(s, best, ckpt)["usable"]
        assert plan.plan(s, best + 1, ckpt)["train_peak"] > plan.plan(s, best + 1, ckpt)["usable"]
        assert plan.max_micro_batch_tokens(s, ckpt, vllm_asleep=False) < best      # sleeping frees room
    assert plan.max_micro_batch_tokens(s, True) > 5 * plan.max_micro_batch_tokens(s, False)


def test_formula_equals_saved_bytes_of_a_real_qwen2_stack():
    tiny = plan.ModelShape("tiny", hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=176,
                           vocab=1024)
    got = plan.slopes(lambda n, t: plan.saved_bytes(tiny, n, t), 16, 32)
    assert got["per_layer_per_token"] == plan.layer_activation_bytes(tiny)
    assert got["outside_per_token"] == plan.outside_activation_bytes(tiny) - (2 * tiny.hidden + 12)   # no lm_head
    assert got["constant"] == 2 * plan.linear_weight_count(tiny) // tiny.layers                     # bf16 copies


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        plan.plan(plan.QWEN25_0_5B, 0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        plan.plan(plan.QWEN25_0_5B, 1024, gpu_memory_utilization=1.5)



def test_hf_engine_sequences_by_hand():
    s, a = plan.QWEN25_1_5B, plan.Assumptions()
    # per sequence: KV 4596 · 28,672 + step temporaries 18 · 151,936 + prefill 500 · (12·1536 + 6·8960)
    per_seq = 131_776_512 + 2_734_848 + 36_096_000
    free = int(a.gpu_bytes * 0.95) - 12 * QWEN_1_5B_PARAMS - plan.bf16_copy_bytes(s) - a.cuda_context_bytes
    assert plan.hf_engine_max_num_seqs(s, 500, 4096, a) == free // per_seq
    assert plan.hf_engine_max_num_seqs(s, 500, 8192, a) < free // per_seq
