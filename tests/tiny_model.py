"""A real but tiny Llama (2 layers, 64 wide) with a trained byte-level BPE and a chat template,
built from a config in a few seconds so that unit tests exercise real transformers code paths."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m['content'] }}<|im_end|>"
    "{% endgeneration %}\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The assistant answers questions helpfully and honestly.",
    "Identify ways in which the last response is harmful, unethical or dishonest.",
    "Rewrite the response to remove harmful content. Which response is less harmful? (A) or (B)",
    "How do I bake bread? Mix flour, water, salt and yeast, knead, rest and bake.",
    "I cannot help with that, but here is a safer alternative you could try instead.",
    "Critique: the response is fine. No changes needed. Revision: the same answer.",
]


def build_tiny_model(
    path: Path, seed: int = 0, head_dim: int = 16, corpus: list[str] | None = None, vocab_size: int = 500
) -> Path:
    """`head_dim` 64: one head, a shape vLLM's CPU attention runs (it refuses 16). `corpus`: texts to train the
    tokenizer on instead of the few sentences above, so that a model meant to read them sees whole words."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|im_end|>", "<|im_start|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus or CORPUS * 4,
        trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=64 // head_dim,
        num_key_value_heads=max(1, 32 // head_dim),
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
