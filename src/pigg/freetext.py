"""Free-text answers (descriptions, VQA): seed 003's similarity score, exact match and token F1.

Seed 003 scores a generated answer against the reference by the distance between their contextual
embeddings: each text goes through a model on its own, the last hidden layer is averaged over the text's
tokens, and the score is the cosine distance (1 - cosine similarity) between the two vectors, averaged
over the data set: 0 is an identical answer; its base model scored 0.596, LoRA 0.037, full 0.031.
Which model embeds matters (each model's space is its own): `self` (the seed's way: the evaluated model
embeds its answers and the references), or `base` (one space for every model compared), or a folder of
any Hugging Face model.

Exact match and token F1 are SQuAD's: lower case, punctuation and articles removed, whitespace collapsed;
F1 over the bag of tokens.
"""

from __future__ import annotations

import re
import string
from collections import Counter

import torch

ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


def token_f1(prediction: str, reference: str) -> float:
    predicted, wanted = normalise(prediction).split(), normalise(reference).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


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


def generate_answers(agent, samples, batch_size: int, progress=None) -> list[str]:
    """Greedy answers to the samples' prompts (their last answer is the reference), batched."""
    from pigg.data.render import prompt_messages

    answers: list[str] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [prompt_messages(agent.renderer.messages(s)) for s in chunk]
        images = [[agent.renderer.load_image(ref, s.base_dir) for ref in s.image_refs()] for s in chunk]
        answers += [a.strip() for a in agent.generate_text(agent.prompt_inputs(prompts, images))]
        if progress:
            progress(len(answers), len(samples))
    return answers


def reference_answer(agent, sample) -> str:
    """The sample's last answer as training renders it (a target-derived answer in the family's form)."""
    messages = agent.renderer.messages(sample)
    last = [m for m in messages if m["role"] == "assistant"][-1]
    return "".join(i.get("text", "") for i in last["content"] if i["type"] == "text").strip()


def evaluate_freetext(
    refs, samples, out, embed_with: str = "self", batch_size: int = 8, max_new_tokens: int = 64
):
    """Every model's answers scored against the references: similarity (seed 003), exact match, token
    F1; OUT/freetext.json (its path is returned), freetext.md, answers_<model>.jsonl."""
    import gc
    import json
    import statistics
    from pathlib import Path

    from pigg.infer import Agent, base_of, resolve_model
    from pigg.progress import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    embedder = None
    if embed_with not in ("self", "base"):
        embedder = _embedder(resolve_model(embed_with))
    elif embed_with == "base":
        embedder = _embedder(base_of(next(r for r in refs if r.label != "base")))
    results = {}
    for ref in refs:
        agent = Agent.load(ref, max_new_tokens=max_new_tokens)
        with progress_bar(len(samples), f"answers {agent.label}", unit="samples") as advance:
            answers = generate_answers(agent, samples, batch_size, advance)
        references = [reference_answer(agent, s) for s in samples]
        model, tokenizer = embedder or (agent.model, agent.processor.tokenizer)
        distances = similarity_scores(model, tokenizer, answers, references, batch_size)
        rows = [
            {"source": s.source, "answer": a, "reference": r, "similarity": round(d, 6),
             "exact_match": exact_match(a, r), "token_f1": round(token_f1(a, r), 6)}
            for s, a, r, d in zip(samples, answers, references, distances, strict=True)
        ]  # fmt: skip
        name = f"answers_{re.sub(r'[^A-Za-z0-9_.+-]+', '_', ref.label)}.jsonl"
        (out / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
        results[ref.label] = {
            "similarity": statistics.fmean(d for d in distances),
            "exact_match": statistics.fmean(r["exact_match"] for r in rows),
            "token_f1": statistics.fmean(r["token_f1"] for r in rows),
            "samples": len(rows),
            "answers": name,
        }
        print(
            f"{ref.label}: similarity {results[ref.label]['similarity']:.4f} (0 = identical), exact match "
            f"{100 * results[ref.label]['exact_match']:.1f}%, token F1 {100 * results[ref.label]['token_f1']:.1f}%"
        )
        del agent
        gc.collect()
    report = {"metric": "similarity", "embed_with": embed_with, "models": results}
    path = out / "freetext.json"
    path.write_text(json.dumps(report, indent=2))
    lines = [
        f"similarity: cosine distance of last-layer embeddings (0 = identical), embedded by {embed_with}",
        "",
        "| model | samples | similarity | exact match | token F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, r in results.items():
        lines.append(
            f"| {label} | {r['samples']} | {r['similarity']:.4f} | {100 * r['exact_match']:.1f}% | "
            f"{100 * r['token_f1']:.1f}% |"
        )
    (out / "freetext.md").write_text("\n".join(lines) + "\n")
    return path


def _embedder(ref):
    """(model, tokenizer) of a reference, used only to embed."""
    from pigg.infer import load_weights
    from pigg.models.loading import load_processor, resolve_family

    processor = load_processor(ref.processor_from or ref.base, resolve_family(ref.base))
    return load_weights(ref), processor.tokenizer
