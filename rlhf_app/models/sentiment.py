"""A bag-of-embeddings sentiment classifier that loads like any Hugging Face classifier.

The offline stand-in for `lvwerra/distilbert-imdb` (no pretrained classifier ships on PyPI):
mean-pooled token embeddings plus hashed token-pair embeddings, then a linear head, in the
manner of fastText. Importing this module registers it with the Auto classes, so
`AutoModelForSequenceClassification.from_pretrained(folder)` returns it without remote code.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "rlhf_app_bag_of_embeddings"
# Multiplier of the pair hash: a prime above any vocabulary size used here keeps pairs distinct.
PAIR_HASH_PRIME = 1_000_003


class BagOfEmbeddingsConfig(PreTrainedConfig):
    """Sizes of the classifier: a `vocab_size` × `hidden_size` token table and a
    `num_buckets` × `hidden_size` table for hashed pairs of adjacent tokens."""

    model_type = MODEL_TYPE

    vocab_size: int = 4096
    hidden_size: int = 16
    num_buckets: int = 262_144
    pad_token_id: int | None = None
    initializer_range: float = 0.1


def pair_buckets(input_ids: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Hash each adjacent token pair to a bucket: (batch, seq) -> (batch, seq - 1)."""
    return (input_ids[:, :-1] * PAIR_HASH_PRIME + input_ids[:, 1:]) % num_buckets


class BagOfEmbeddingsForSequenceClassification(PreTrainedModel):
    """`forward(input_ids, attention_mask)` -> `.logits` of shape (batch, num_labels).

    Padding-side agnostic: only positions where `attention_mask` is 1 (and, for pairs, both
    tokens of the pair) enter the mean, so left and right padding give the same logits.
    """

    config_class = BagOfEmbeddingsConfig
    base_model_prefix = "bag"

    def __init__(self, config: BagOfEmbeddingsConfig):
        super().__init__(config)
        self.token_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pair_embeddings = nn.Embedding(config.num_buckets, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of token and pair embeddings over real tokens: (batch, seq) -> (batch, hidden)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.to(self.token_embeddings.weight.dtype)
        total = (self.token_embeddings(input_ids) * mask[..., None]).sum(1)
        if input_ids.shape[1] > 1:
            pair_mask = mask[:, :-1] * mask[:, 1:]
            pairs = self.pair_embeddings(pair_buckets(input_ids, self.config.num_buckets))
            total = total + (pairs * pair_mask[..., None]).sum(1)
        return total / mask.sum(1, keepdim=True).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> SequenceClassifierOutput:
        logits = self.classifier(self.pooled(input_ids, attention_mask))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MODEL_TYPE, BagOfEmbeddingsConfig, exist_ok=True)
AutoModelForSequenceClassification.register(BagOfEmbeddingsConfig, BagOfEmbeddingsForSequenceClassification,
                                            exist_ok=True)
