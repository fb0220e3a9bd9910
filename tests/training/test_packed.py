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
    assert not packed.wanted(None, lengths, [[0, 1], [2, 3]], above=0.4)  # a machine where packing pays less
    assert packed.wanted(None, lengths, [[0, 1, 2], [3]], above=-0.1)  # packed faster even without padding
    assert packed.wanted(True, lengths, [[0, 1, 2], [3]]) and not packed.wanted(False, lengths, [[0, 1], [2, 3]])


def test_the_threshold_is_measured_once_per_machine_and_shape_and_cached(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    model = _model(tiny_bert).float()
    cpu = torch.device("cpu")
    paths: dict[str, str | None] = {"attention": "eager", "dropout": None, "weights": None}
    timed: list[list[int]] = []

    def per_token(measured: nn.Module, windows: list[list[int]], *args: object) -> dict[str, float]:
        assert measured is model
        timed.append([len(w) for w in windows])
        return {"padded": 1.0e-4, "packed": 1.25e-4}  # a token costs a quarter more packed

    monkeypatch.setattr(packed, "measure", per_token)
    assert packed.threshold(model, cpu, "fp32", 100, 0, paths) == pytest.approx(0.2)
    assert timed == [[128, 119, 110, 101, 92, 83, 74, 64]]  # the width's bucket down to half of it
    (cached,) = (tmp_path / "calibration").glob("train-batches-*.json")
    record = json.loads(cached.read_text())
    assert record["pack_above"] == 0.2 and record["shape"]["attention"] == "eager"
    monkeypatch.setattr(packed, "measure", lambda *args: pytest.fail("measured again despite the cache"))
    assert packed.threshold(model, cpu, "fp32", 120, 0, paths) == pytest.approx(0.2)
    monkeypatch.setattr(packed, "measure", lambda *args: {"padded": 1.0e-4, "packed": 0.8e-4})
    # other paths are another measurement; faster packed even without padding: below zero
    assert packed.threshold(model, cpu, "fp32", 120, 0, {**paths, "attention": "sdpa"}) == pytest.approx(-0.25)
    monkeypatch.setenv("HRLM_CALIBRATE", "off")
    assert packed.threshold(model, cpu, "fp32", 120, 0, paths) == packed.PACK_ABOVE


def test_measuring_times_both_layouts_and_leaves_the_model_as_it_was(tiny_bert: Path) -> None:
    model = _model(tiny_bert).float()
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    windows = packed.timed_windows(32, model.config.vocab_size)
    seconds = packed.measure(model, windows, 0, torch.device("cpu"), "bf16", {"attention": "eager", "weights": "bf16"})
    assert set(seconds) == {"padded", "packed"} and all(0 < v < 1 for v in seconds.values())
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 copies only while timed
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize(("threshold", "batches"), [(0.0, "packed"), (1.0, "padded")])
def test_training_by_default_packs_as_its_batches_padding_decides(
    tiny_bert: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: float, batches: str
) -> None:
    monkeypatch.setattr(packed, "threshold", lambda *args: threshold)
    result = train(tickets_csv, tmp_path / "m", tiny_train_config(tiny_bert, epochs=1), progress=False)
    assert result.paths["batches"] == batches


def test_training_measures_where_packing_pays_with_its_own_paths(
    tiny_bert: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[dict[str, str | None]] = []

    def never(model: nn.Module, device: torch.device, precision: str, width: int, pad_id: int, paths: dict) -> float:
        asked.append(dict(paths))
        return 1.0

    monkeypatch.setattr(packed, "threshold", never)
    result = train(tickets_csv, tmp_path / "m", tiny_train_config(tiny_bert, epochs=1), progress=False)
    assert result.paths["batches"] == "padded"
    assert asked == [{k: result.paths[k] for k in ("attention", "dropout", "weights")}]
    train(tickets_csv, tmp_path / "m2", tiny_train_config(tiny_bert, epochs=1, packing=False), progress=False)
    assert len(asked) == 1  # packing set: nothing to measure


def test_the_heap_guard_hands_memory_back_only_once_the_process_has_grown(monkeypatch: pytest.MonkeyPatch) -> None:
    # packed batches' activations come in ever different sizes: the kept heap grows unless handed back
    resident = iter([1000, 1100, 1300, 1000, 1200, 1300, 1250])  # what /proc/self/statm would say
    released: list[int] = []
    monkeypatch.setattr(packed, "HEAP_GROWTH", 1.25)
    monkeypatch.setattr(packed, "resident_bytes", lambda: next(resident))
    monkeypatch.setattr(packed, "release_freed_memory", lambda: released.append(guard.steps))
    guard = packed.HeapGuard()
    for _ in range(6):
        guard.after_step()
    # step 1 warms up; step 2 sets the baseline (1000); 1100 is within a quarter; 1300 is past it, and
    # the hand-back brings it to 1000; 1200 is within; 1300 again past it: handed back, 1250 stays
    assert released == [4, 6] and guard.releases == 2 and guard.baseline == 1250


def test_packed_training_runs_the_heap_guard_after_every_step(
    tiny_bert: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps: list[int] = []
    monkeypatch.setattr(packed.HeapGuard, "after_step", lambda self: steps.append(1))
    train(tickets_csv, tmp_path / "m", tiny_train_config(tiny_bert, epochs=1, packing=True), progress=False)
    assert len(steps) > 0
    packed_steps = len(steps)
    train(tickets_csv, tmp_path / "m2", tiny_train_config(tiny_bert, epochs=1, packing=False), progress=False)
    assert len(steps) == packed_steps  # padded batches: no guard
