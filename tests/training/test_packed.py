from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hrlm.inference import collate
from hrlm.modeling import TaskSpec, build_model
from hrlm.training import chunked_attention, packed
from hrlm.training.fitting import train
from tests.conftest import tiny_train_config

# windows of mixed lengths: two attention groups, one of them with padding inside
WINDOWS = [[2, 7, 9, 11, 3], [2, 8, 3], [2, 5, 6, 7, 8, 9, 10, 12, 13, 3], [2, 9, 9, 3], [2, 4, 5, 6, 7, 8, 9, 3]]


def _model(tiny_bert: Path, pooling: str = "pooler") -> nn.Module:
    torch.manual_seed(0)
    return build_model(tiny_bert, [TaskSpec("label", ["a", "b", "c"])], pooling=pooling).double()


def _padded(model: nn.Module, order: list[int]) -> torch.Tensor:
    ids, mask = collate([WINDOWS[i] for i in order], 0)
    return model(ids, mask)["label"]


@pytest.mark.parametrize("implementation", [chunked_attention.NAME, "sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["pooler", "mean"])
def test_packed_batches_give_the_padded_logits_and_gradients(
    tiny_bert: Path, implementation: str, pooling: str
) -> None:
    chunked_attention.register()
    model = _model(tiny_bert, pooling)
    model.eval()  # no dropout: the two layouts must then agree to rounding
    batch, order = packed.collate(WINDOWS, [4, 0, 2, 1, 3])
    assert sorted(order) == [0, 1, 2, 3, 4] and len(batch.groups) >= 2
    target = torch.tensor([0, 2, 1, 1, 0])[order]
    grads = []
    for run in (lambda: packed.logits(model, batch, implementation)["label"], lambda: _padded(model, order)):
        model.zero_grad()
        out = run()
        nn.functional.cross_entropy(out, target).backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (mine, mine_grads), (padded, padded_grads) = grads
    torch.testing.assert_close(mine, padded)
    assert len(mine_grads) == len(padded_grads) > 0
    for a, b in zip(mine_grads, padded_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_packed_training_applies_the_embeddings_and_layers_dropout(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    batch, _ = packed.collate(WINDOWS, [0, 1, 2, 3, 4])
    model.eval()
    still = packed.logits(model, batch, "eager")["label"]
    model.train()
    torch.manual_seed(1)
    dropped = packed.logits(model, batch, "eager")["label"]
    assert not torch.allclose(dropped, still)
    model.encoder.embeddings.dropout.p = 0.0
    for module in model.encoder.encoder.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.dropout.p = 0.0
    torch.testing.assert_close(packed.logits(model, batch, "eager")["label"], still)
    model.encoder.embeddings.dropout.p = 0.5  # the embeddings' own dropout, alone, changes the logits
    assert not torch.allclose(packed.logits(model, batch, "eager")["label"], still)


def test_packing_is_used_on_a_cpu_for_bert_without_attention_dropout(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    cpu = torch.device("cpu")
    assert packed.usable(model, cpu, packing=True, attention_dropout=0.0)
    assert not packed.usable(model, cpu, packing=False, attention_dropout=0.0)
    assert not packed.usable(model, cpu, packing=True, attention_dropout=0.1)
    assert not packed.usable(model, torch.device("cuda"), packing=True, attention_dropout=None)
    assert not packed.usable(nn.Linear(2, 2), cpu, packing=True, attention_dropout=0.0)


@pytest.mark.parametrize("packing", [True, False])
def test_training_records_its_batches_and_learns_either_way(
    tiny_bert: Path, tickets_csv: Path, tmp_path: Path, packing: bool
) -> None:
    result = train(tickets_csv, tmp_path / "m", tiny_train_config(tiny_bert, packing=packing), progress=False)
    assert result.paths["batches"] == ("packed" if packing else "padded")
    metrics = json.loads((tmp_path / "m" / "report" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9


def test_by_default_a_run_packs_only_batches_that_padding_would_fill_beyond_the_threshold() -> None:
    lengths = [10, 10, 10, 40]
    assert packed.padding_share(lengths, [[0, 1], [2, 3]]) == pytest.approx(30 / 100)
    assert packed.padding_share(lengths, [[0, 1, 2], [3]]) == 0.0
    assert packed.wanted(None, lengths, [[0, 1], [2, 3]])  # 30% padding: above the 25%
    assert not packed.wanted(None, lengths, [[0, 1, 2], [3]])
    assert packed.wanted(True, lengths, [[0, 1, 2], [3]]) and not packed.wanted(False, lengths, [[0, 1], [2, 3]])


@pytest.mark.parametrize(("threshold", "batches"), [(0.0, "packed"), (1.0, "padded")])
def test_training_by_default_packs_as_its_batches_padding_decides(
    tiny_bert: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: float, batches: str
) -> None:
    monkeypatch.setattr(packed, "PACK_ABOVE", threshold)
    result = train(tickets_csv, tmp_path / "m", tiny_train_config(tiny_bert, epochs=1), progress=False)
    assert result.paths["batches"] == batches
