"""Data augmentation of training text: token noise and contextual substitution.

Augmented copies are added to the training split only, never to validation or test, with their
own seed so that the rest of the run stays reproducible when augmentation changes.

- ``noise``: each word is deleted with a small probability and a few neighbouring words swap
  places (EDA, Wei and Zou 2019, without the thesaurus).
- ``contextual``: some words are masked and replaced by what a masked-LM head predicts in their
  context, sampled from its top guesses (Kobayashi 2018). It needs an encoder with a trained MLM
  head, such as the output of ``hrlm pretrain``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from hrlm._progress import ProgressBar
from hrlm.config import AUGMENT_MODES, check_choice
from hrlm.data import Dataset
from hrlm.errors import ConfigError


def token_noise(text: str, rng: random.Random, *, delete: float = 0.1, swap: float = 0.1) -> str:
    """Delete each word with probability ``delete`` and swap about ``swap`` x n adjacent pairs.

    A text of one word is returned unchanged; at least one word always survives.

    Example:
        >>> token_noise("my payslip is missing overtime hours", random.Random(3))
        'payslip my is missing overtime'
    """
    words = text.split()
    if len(words) < 2:
        return text
    kept = [w for w in words if rng.random() >= delete] or [rng.choice(words)]
    for _ in range(max(1, round(swap * len(kept))) if len(kept) > 1 else 0):
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


class ContextualSubstituter:
    """Replace a share of words with a masked-LM's guesses in context.

    Only words that are one word piece long are replaced, and only by whole-word pieces, so the
    text stays readable. Guesses are sampled from the ``top_k`` most likely, never the original.
    """

    def __init__(
        self, folder: str | Path, *, share: float = 0.15, top_k: int = 5, max_length: int = 128, device: str = "cpu"
    ) -> None:
        from transformers import AutoModelForMaskedLM

        from hrlm.encoders import load_tokenizer, resolve_base
        from hrlm.modeling import quiet_transformers

        quiet_transformers()
        path = resolve_base(str(folder))
        self.tokenizer = load_tokenizer(path)
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(path), local_files_only=True, output_loading_info=True, dtype=torch.float32
        )
        prefix = model.base_model_prefix + "."
        head_missing = [k for k in info.get("missing_keys", []) if not k.startswith(prefix) and "position_ids" not in k]
        if head_missing:
            raise ConfigError(
                f"{str(folder)!r} has no trained masked-LM head, which contextual augmentation needs; "
                "run `hrlm pretrain` on your text and pass its --out folder as --augment-mlm."
            )
        if self.tokenizer.mask_token_id is None:
            raise ConfigError(f"the tokenizer of {str(folder)!r} has no mask token.")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.share, self.top_k, self.max_length = share, top_k, max_length
        vocab = self.tokenizer.get_vocab()
        special = set(self.tokenizer.all_special_ids)
        self.allowed = torch.tensor(
            [
                tok.isalpha() and not tok.startswith("##") and i not in special
                for tok, i in sorted(vocab.items(), key=lambda x: x[1])
            ]
        )

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], rng: random.Random, *, progress: bool = False) -> list[str]:
        """One substituted version of each text."""
        out: list[str] = []
        bar = ProgressBar(len(texts), "augmenting", unit="texts", enabled=progress and len(texts) >= 200)
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        for start in range(0, len(texts), 32):
            out.extend(self._batch(list(texts[start : start + 32]), rng, g))
            bar.update(advance=min(32, len(texts) - start))
        bar.close()
        return out

    def _batch(self, texts: list[str], rng: random.Random, g: torch.Generator) -> list[str]:
        tok = self.tokenizer
        words = [t.split() for t in texts]
        enc = tok(
            words,
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        ids = enc["input_ids"]
        targets: list[list[tuple[int, int]]] = []  # (position, word index) per text
        for row in range(len(texts)):
            word_ids = enc.word_ids(row)
            pieces: dict[int, list[int]] = {}
            for pos, w in enumerate(word_ids):
                if w is not None:
                    pieces.setdefault(w, []).append(pos)
            single = [(ps[0], w) for w, ps in pieces.items() if len(ps) == 1 and words[row][w].isalpha()]
            n = max(1, round(self.share * len(pieces))) if single else 0
            chosen = rng.sample(single, min(n, len(single)))
            for pos, _ in chosen:
                ids[row, pos] = tok.mask_token_id
            targets.append(chosen)
        logits = self.model(input_ids=ids.to(self.device), attention_mask=enc["attention_mask"].to(self.device)).logits
        results = []
        for row, chosen in enumerate(targets):
            new = list(words[row])
            for pos, w in chosen:
                scores = logits[row, pos].float().cpu()
                scores[~self.allowed] = -float("inf")
                original = tok.convert_tokens_to_ids(new[w].lower())
                if isinstance(original, int) and 0 <= original < len(scores):
                    scores[original] = -float("inf")
                top = scores.topk(self.top_k)
                probs = torch.softmax(top.values, dim=0)
                pick = int(top.indices[int(torch.multinomial(probs, 1, generator=g))])
                guess = tok.convert_ids_to_tokens(pick)
                new[w] = guess.capitalize() if new[w][:1].isupper() else guess
            results.append(" ".join(new))
        return results


def augment_dataset(
    ds: Dataset,
    mode: str,
    *,
    copies: int = 1,
    seed: int = 13,
    mlm: str | Path | None = None,
    progress: bool = False,
    device: str = "cpu",
) -> Dataset:
    """The dataset plus ``copies`` augmented versions of each labelled text.

    With ``both``, each copy is noised after contextual substitution. ``mlm`` is the folder of an
    encoder with a trained masked-LM head (contextual modes only).
    """
    check_choice("augment", mode, AUGMENT_MODES)
    if mode == "none" or copies < 1 or ds.labels is None:
        return ds
    if mode in ("contextual", "both") and mlm is None:
        raise ConfigError(
            "contextual augmentation needs an encoder with a trained masked-LM head; "
            "run `hrlm pretrain` and pass its folder as --augment-mlm."
        )
    rng = random.Random(seed)
    substitute = ContextualSubstituter(mlm, device=device) if mode in ("contextual", "both") and mlm else None
    texts, labels, groups = list(ds.texts), list(ds.labels), list(ds.groups) if ds.groups is not None else None
    for _ in range(copies):
        new: Sequence[str] = substitute(ds.texts, rng, progress=progress) if substitute else ds.texts
        if mode in ("noise", "both"):
            new = [token_noise(t, rng) for t in new]
        texts.extend(new)
        labels.extend(ds.labels)
        if groups is not None and ds.groups is not None:
            groups.extend(ds.groups)
    note = f"augmentation ({mode}, {copies} x, seed {seed}): {len(ds)} -> {len(texts)} training texts"
    return replace(ds, texts=texts, labels=labels, groups=groups, splits=None, notes=[*ds.notes, note])
