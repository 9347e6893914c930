"""Seed 003's similarity score: the cosine distance between the contextual embeddings of an answer and its
reference. Each text goes through a model on its own, the last hidden layer is averaged over the text's
tokens, and the score is 1 - cosine similarity (0: identical). Which model embeds matters (each model's
space is its own): `self` (the seed's way: the evaluated model embeds its answers and the references),
`base` (one space for every model compared), or any Hugging Face model. Evaluation computes it, as it
needs a model; the describe task reports it.
"""

from __future__ import annotations

import torch


def contextual_embeddings(model, tokenizer, texts: list[str], batch_size: int = 16) -> torch.Tensor:
    """Each text's last hidden layer averaged over its tokens (padding excluded): (len(texts), hidden).
    An empty text has no token to average: it gets a zero vector, at distance 1 from everything."""
    vectors = []
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        encoded = tokenizer(chunk, padding=True, return_tensors="pt", add_special_tokens=False)
        ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        if ids.shape[1] == 0:
            vectors.append(torch.zeros(len(chunk), model.config.get_text_config().hidden_size))
            continue
        with torch.inference_mode():
            hidden = model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False
            ).hidden_states[-1]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * weights).sum(1)
        vectors.append((summed / weights.sum(1).clamp(min=1)).float().cpu())
    return torch.cat(vectors)


def cosine_distances(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """1 - cosine similarity, row by row; a zero vector is at distance 1."""
    similarity = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)
    return (1 - similarity).clamp(min=0).tolist()


def similarity_scores(model, tokenizer, predictions: list[str], references: list[str], batch_size: int = 16):
    """Seed 003's score per sample: the cosine distance between the contextual embeddings of the
    prediction and of the reference, both from `model`."""
    embedded = contextual_embeddings(model, tokenizer, predictions + references, batch_size)
    return cosine_distances(embedded[: len(predictions)], embedded[len(predictions) :])


def embedder(ref):
    """(model, tokenizer) of a reference, used only to embed."""
    from pigg.infer import load_weights
    from pigg.models.loading import load_processor, resolve_family

    processor = load_processor(ref.processor_from or ref.base, resolve_family(ref.base))
    return load_weights(ref), processor.tokenizer
