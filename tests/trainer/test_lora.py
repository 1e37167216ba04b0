"""LoRA through peft: only the adapters train; checkpoints hold the adapter weights."""

import pytest
import torch

import rapid
from rapid import checkpoint

from rapid.testing import PROMPTS, digits_reward, small_config

peft = pytest.importorskip("peft")


def test_lora_trains_adapters_only(tiny, tmp_path):
    model, tok = tiny
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    result = rapid.train(model, PROMPTS, digits_reward, small_config(lr=1e-2, output_dir=str(tmp_path)),
                         tokenizer=tok, peft_config=lora)
    assert hasattr(result.model, "peft_config") and len(result.history) == 2
    trained = result.model.get_base_model().state_dict()
    for name, value in base_before.items():
        key = name.replace("q_proj.", "q_proj.base_layer.").replace("v_proj.", "v_proj.base_layer.")
        torch.testing.assert_close(trained[key], value, msg=name)
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and max(p.abs().max().item() for p in lora_b) > 0
    saved = checkpoint.stored_model_keys(checkpoint.latest_checkpoint(tmp_path / "checkpoints"))
    assert saved and all("lora" in k for k in saved)
    # the run's model directory is a full (merged) model any tool can load; the adapter is saved beside it
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert not hasattr(merged, "peft_config") and (tmp_path / "adapter" / "adapter_config.json").exists()
    q = result.model.get_base_model().model.layers[0].self_attn.q_proj
    torch.testing.assert_close(merged.model.layers[0].self_attn.q_proj.weight,
                               q.base_layer.weight + q.get_delta_weight("default"))
