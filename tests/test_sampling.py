"""Sampling fidelity: the tokens are drawn from exactly the distribution whose log-probs PPO uses,
whatever the model's own generation_config says; dropout of every kind is off in training."""

import types

import pytest
import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.generation import WatermarkingConfig

from rlhf_app.config import load_config
from rlhf_app.models.policy import PolicyAndValue, disable_all_dropout
from rlhf_app.engines.generation import generation_config, model_defaults_off
from rlhf_app.rl.rollout import logprobs_values

VOCAB, PAD, EOS = 40, 0, 1
# Every logits processor a model's generation_config.json can switch on behind the trainer's back.
HOSTILE = dict(do_sample=True, repetition_penalty=1.8, no_repeat_ngram_size=2, min_p=0.1, typical_p=0.6, epsilon_cutoff=0.02,
               eta_cutoff=0.02, bad_words_ids=[[5], [6, 7]], suppress_tokens=[8, 9], begin_suppress_tokens=[10],
               forced_eos_token_id=11, min_new_tokens=4, min_length=12, sequence_bias={(12,): 4.0},
               exponential_decay_length_penalty=(2, 1.6), top_k=4, top_p=0.5, renormalize_logits=True,
               encoder_repetition_penalty=1.5, top_h=0.5,
               watermarking_config=WatermarkingConfig(bias=3.0, greenlist_ratio=0.25))


def _hostile_model():
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=EOS))
    policy.generation_config = GenerationConfig(pad_token_id=PAD, eos_token_id=EOS, **HOSTILE)
    return PolicyAndValue(policy).eval()


def _sample_and_rescore(model, ppo, defaults_off: bool):
    """Sampled tokens' log-probs as generate computed them, and as the trainer recomputes them."""
    tok = types.SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS)
    gen = generation_config(ppo, tok)
    gen.output_scores, gen.return_dict_in_generate = True, True
    query = torch.randint(2, VOCAB, (6, 5), generator=torch.Generator().manual_seed(1))
    qmask = torch.ones_like(query)
    torch.manual_seed(2)
    with torch.no_grad(), (model_defaults_off(model.policy) if defaults_off else torch.enable_grad()):
        out = model.policy.generate(input_ids=query, attention_mask=qmask, generation_config=gen)
    response = out.sequences[:, query.shape[1]:]
    sampled = torch.stack(out.scores, 1).float().log_softmax(-1).gather(-1, response[..., None]).squeeze(-1)
    with torch.no_grad():
        recomputed, _ = logprobs_values(model, query, qmask, response, torch.ones_like(response, dtype=torch.float),
                                        ppo.temperature)
    return sampled, recomputed


def test_sampled_log_probs_equal_the_trainers_despite_the_models_generation_config():
    ppo = load_config(["recipe=tiny", "ppo.response_length=12", "ppo.stop_token=null", "ppo.temperature=0.7"]).ppo
    model = _hostile_model()
    sampled, recomputed = _sample_and_rescore(model, ppo, defaults_off=True)
    assert torch.isfinite(sampled).all()
    assert (sampled - recomputed).abs().max().item() < 1e-4
    # The model keeps (and would save) its own generation_config.
    assert model.policy.generation_config.repetition_penalty == 1.8
    # Without the guard the same model samples from another distribution: the check can fail.
    sampled, recomputed = _sample_and_rescore(model, ppo, defaults_off=False)
    assert not ((sampled - recomputed).abs().max().item() < 1e-2)


def test_generation_config_sets_every_inheritable_processor_to_its_no_op():
    ppo = load_config(["recipe=tiny"]).ppo
    gen = generation_config(ppo, types.SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS))
    assert (gen.repetition_penalty, gen.no_repeat_ngram_size, gen.typical_p, gen.epsilon_cutoff, gen.eta_cutoff,
            gen.min_new_tokens, gen.top_k, gen.top_p) == (1.0, 0, 1.0, 0.0, 0.0, 0, 0, 1.0)
    # min_length (counted with the prompt) is left unset: model_defaults_off keeps the model's out of it.


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_attention_dropout_is_off_in_train_mode(arch):
    torch.manual_seed(0)
    if arch == "llama":  # applies config.attention_dropout inside the attention function, not via nn.Dropout
        policy = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=64, attention_dropout=0.1))
    else:
        policy = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                            attn_pdrop=0.1, resid_pdrop=0.1, embd_pdrop=0.1))
    model = PolicyAndValue(policy).train()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        differs = (model(ids, mask)[0] - model(ids, mask)[0]).abs().max().item()
    assert differs > 1e-4  # dropout is live before: the check can fail
    disable_all_dropout(model)
    with torch.no_grad():
        assert torch.equal(model(ids, mask)[0], model(ids, mask)[0])
    assert model.training
