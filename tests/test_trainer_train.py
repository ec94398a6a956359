"""The training loop on a tiny random Gemma 3: loss falls, adapters round-trip, metadata is checked."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from agile.adapters import AdapterError, AdapterMeta, apply_adapter, load_adapter, save_adapter
from agile.models import load_model
from agile.prompt import PromptTemplate
from agile.scoring import LabelScorer, pad_batch
from agile.testing import make_tiny_preset
from agile.tokens import PromptTokenizer
from agile.trainer.data import ethos_split
from agile.trainer.settings import ALL_TARGETS, TrainSettings
from agile.trainer.train import autocast_bfloat16, causal_lm_loss, encode_rows, label_loss, train

TEMPLATE = PromptTemplate()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_preset(tmp_path_factory.mktemp("tiny") / "preset"))


@pytest.fixture(scope="module")
def examples():
    train_rows, _ = ethos_split()
    return train_rows.head(8)


def mean_loss(model, examples, settings) -> float:
    """The objective's loss over all rows, without gradients."""
    tokenizer = PromptTokenizer.from_model(model)
    rows = encode_rows(model, TEMPLATE, examples, settings)
    label_ids = tokenizer.label_ids(TEMPLATE.labels)
    ids, mask = pad_batch(rows, tokenizer.pad_id)
    with torch.no_grad():
        if settings.objective == "label":
            return float(label_loss(model, ids, mask, torch.as_tensor(examples.labels), label_ids))
        return float(causal_lm_loss(model, ids, mask))


@pytest.mark.parametrize("objective,lr", [("label", 3e-2), ("causal-lm", 1e-1)])
def test_a_few_steps_lower_the_loss(tiny, examples, objective, lr):
    settings = TrainSettings(objective=objective, learning_rate=lr, epochs=5, batch_size=4, rank=4)
    model = load_model(tiny)
    result = train(model, TEMPLATE, examples, settings)
    after = mean_loss(model, examples, settings)
    reference = load_model(tiny)
    reference.backbone.enable_lora(4, target_layer_names=["query", "value"])  # LoRA B starts at zero
    before = mean_loss(reference, examples, settings)
    assert after < before - 0.05, (before, after)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5]
    assert all(r.steps == 2 for r in result.history)
    losses = [r.loss for r in result.history]
    assert losses == sorted(losses, reverse=True)  # falls every epoch


def test_best_validation_epoch_is_the_one_kept(tiny, examples):
    model = load_model(tiny)
    aucs = iter([0.6, 0.9, 0.7])
    snapshots = []

    def validate(m):
        snapshots.append([w.numpy().copy() for w in m.backbone.trainable_weights])
        return next(aucs)

    result = train(model, TEMPLATE, examples, TrainSettings(epochs=3, learning_rate=1e-2), validate=validate)
    assert result.best_epoch == 2
    kept = [w.numpy() for w in model.backbone.trainable_weights]
    assert all(np.array_equal(a, b) for a, b in zip(kept, snapshots[1], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(kept, snapshots[2], strict=True))


@pytest.mark.parametrize("epochs,ran,stopped", [(4, 3, True), (3, 3, False)])
def test_patience_stops_early_and_says_so_only_when_epochs_are_left(tiny, examples, capsys, epochs, ran, stopped):
    aucs = iter([0.6, 0.9, 0.7, 0.8])
    result = train(load_model(tiny), TEMPLATE, examples, TrainSettings(epochs=epochs, patience=1),
                   validate=lambda m: next(aucs))
    assert len(result.history) == ran and result.best_epoch == 2
    assert ("stopping: no better validation ROC-AUC" in capsys.readouterr().out) is stopped


def _meta(model, **changes) -> AdapterMeta:
    fields = dict(
        name="tiny", base_model=model.agile_info.spec, base_checksum=model.agile_info.checksum,
        labels=list(TEMPLATE.labels), instructions=TEMPLATE.instructions, separator=TEMPLATE.separator,
        eos=TEMPLATE.eos, rank=4, target_layers=["query", "value"], objective="label", max_length=128,
        positive_label="Negative", threshold=0.42,
    )
    fields.update(changes)
    return AdapterMeta(**fields)


def test_save_then_load_gives_identical_scores(tiny, examples, tmp_path):
    model = load_model(tiny)
    train(model, TEMPLATE, examples, TrainSettings(epochs=1, learning_rate=1e-2))
    before = LabelScorer(model, TEMPLATE).score(examples.texts).probs
    save_adapter(model, _meta(model), tmp_path / "adapter")

    fresh = load_model(tiny)
    untrained = LabelScorer(fresh, TEMPLATE).score(examples.texts).probs
    adapter = load_adapter(tmp_path / "adapter")
    apply_adapter(fresh, adapter)
    after = LabelScorer(fresh, adapter.meta.template).score(examples.texts).probs
    np.testing.assert_array_equal(before, after)
    assert not np.allclose(untrained, after)  # the weights did change something
    assert adapter.meta.threshold == 0.42 and adapter.meta.positive_label == "Negative"
    # readable by a worker running as another user (safetensors alone writes 0600)
    umask = os.umask(0)
    os.umask(umask)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "adapter").iterdir()}
    assert modes and all(mode == 0o666 & ~umask for mode in modes.values()), modes


def test_adapter_metadata_is_validated(tiny, examples, tmp_path):
    model = load_model(tiny)
    train(model, TEMPLATE, examples, TrainSettings(epochs=1, max_steps=2))
    path = save_adapter(model, _meta(model), tmp_path / "adapter")
    meta = json.loads((path / "adapter.json").read_text())

    (path / "adapter.json").write_text(json.dumps({**meta, "surprise": 1}))
    with pytest.raises(AdapterError, match=r"unknown keys \['surprise'\]"):
        load_adapter(path)
    (path / "adapter.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "rank"}))
    with pytest.raises(AdapterError, match=r"missing \['rank'\]"):
        load_adapter(path)

    (path / "adapter.json").write_text(json.dumps(meta))
    other = load_model(str(make_tiny_preset(tmp_path / "other", seed=1)))
    with pytest.raises(AdapterError, match="adapter was trained on"):
        apply_adapter(other, load_adapter(path))


def test_auto_compute_dtype_uses_bfloat16_only_where_the_hardware_has_it(monkeypatch, tmp_path):
    from agile.trainer import train as train_module

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert autocast_bfloat16("bfloat16", cpu) and not autocast_bfloat16("float32", gpu)
    assert autocast_bfloat16("auto", gpu)
    for flags, native in (("fpu avx avx2 fma", False), ("avx2 avx512f avx512_bf16", True), ("avx2 amx_bf16", True)):
        cpuinfo = tmp_path / f"cpuinfo-{native}-{len(flags)}"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(train_module, "Path", lambda _, f=cpuinfo: f)
        assert autocast_bfloat16("auto", cpu) is native


def loss_and_grads(params, compute, *args):
    for p in params:
        p.grad = None
    loss = compute(*args)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in params]


def random_lora(model, params_of) -> list:
    """LoRA enabled by `params_of(model)`, every weight random (B starts at zero: make each one matter)."""
    params = params_of(model)
    rng = np.random.default_rng(3)
    for v in model.backbone.trainable_weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    return params


def assert_same_loss_and_grads(got, want) -> None:
    assert abs(got[0] - want[0]) < 1e-5, (got[0], want[0])
    for g, w in zip(got[1], want[1], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert max(float(g.abs().max()) for g in want[1]) > 1e-3  # the gradients compared are not all zero


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_the_lean_label_loss_and_its_gradients_are_keras_hubs(tmp_path, examples, family):
    """The trainer's lean forward (LoRA read through each kernel, the prompt head once a batch) against
    keras-hub's layers: the same loss and the same gradients on every LoRA weight, for every family."""
    from agile.trainer.train import LeanLabelLoss, enable_lora

    model = load_model(str(make_tiny_preset(tmp_path / "preset", family=family)))
    # every kind of kernel: heads in, heads out, FFN
    params = random_lora(model, lambda m: enable_lora(m, 4, ALL_TARGETS))
    tokenizer = PromptTokenizer.from_model(model)
    label_ids = tokenizer.label_ids(TEMPLATE.labels)
    rows = encode_rows(model, TEMPLATE, examples, TrainSettings())
    targets = torch.as_tensor(examples.labels)
    want = loss_and_grads(params, label_loss, model, *pad_batch(rows, tokenizer.pad_id), targets, label_ids)
    for shared in (True, False):  # the prompt head run once for the batch, or every row whole
        lean = LeanLabelLoss(model, tokenizer, TEMPLATE, label_ids, rows, share_prefix=shared)
        assert len(lean.prefix) > 5 if shared else not lean.prefix
        assert_same_loss_and_grads(loss_and_grads(params, lean, np.arange(len(rows)), targets, "cpu"), want)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_blocks_below_the_lora_run_once_a_training_and_the_loss_stays_keras_hubs(tmp_path, examples, family):
    """LoRA on the last two of four blocks: the first two run once for every row (and the prompt head),
    and each step from their stored output gives keras-hub's loss and gradients, batch after batch."""
    from agile.trainer.train import LeanLabelLoss, enable_lora

    model = load_model(str(make_tiny_preset(tmp_path / "preset", family=family, num_layers=4)))
    params = random_lora(model, lambda m: enable_lora(m, 4, ALL_TARGETS, blocks=2))
    blocks = [b.name for b in model.backbone.transformer_layers]
    lora = {v.path.split("/")[0] for v in model.backbone.trainable_weights}
    assert lora == set(blocks[2:]) and len(params) == 2 * 2 * len(ALL_TARGETS)
    tokenizer = PromptTokenizer.from_model(model)
    label_ids = tokenizer.label_ids(TEMPLATE.labels)
    rows = encode_rows(model, TEMPLATE, examples, TrainSettings())
    for shared in (True, False):
        lean = LeanLabelLoss(model, tokenizer, TEMPLATE, label_ids, rows, frozen=2, share_prefix=shared)
        runs = []

        def counted(*a, real=lean.lean.hidden_states, runs=runs, **k):
            runs.append(a[0].shape)
            return real(*a, **k)

        lean.lean.hidden_states = counted
        for batch in (np.array([5, 1, 3]), np.array([0, 7]), np.arange(len(rows))):
            chosen, targets = [rows[i] for i in batch], torch.as_tensor(examples.labels[batch])
            want = loss_and_grads(params, label_loss, model, *pad_batch(chosen, tokenizer.pad_id), targets, label_ids)
            assert_same_loss_and_grads(loss_and_grads(params, lean, batch, targets, "cpu"), want)
        # the frozen blocks ran on the first step only: the prefix once, the rows in one batch of 8
        assert [s[0] for s in runs] == ([1, 8] if shared else [8]), runs


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_validation_from_the_frozen_blocks_gives_the_scorers_probabilities(tmp_path, examples, family):
    """With LoRA on the last two of four blocks, validation each epoch runs those two blocks from the first
    two's stored output: the probabilities are the scorer's, after the LoRA weights change too."""
    from agile.trainer.train import enable_lora, frozen_validation

    model = load_model(str(make_tiny_preset(tmp_path / "preset", family=family, num_layers=4)))
    settings = TrainSettings(lora_blocks=2, target_layers=ALL_TARGETS)
    params = random_lora(model, lambda m: enable_lora(m, 4, ALL_TARGETS, blocks=2))
    assert frozen_validation(model, TEMPLATE, examples, TrainSettings(target_layers=ALL_TARGETS)) is None
    probs = frozen_validation(model, TEMPLATE, examples, settings)
    scorer = LabelScorer(model, TEMPLATE)
    runs = []
    for _ in range(2):  # the second call after a change of the LoRA weights, as after an epoch
        got, want = probs(), scorer.score(list(examples.texts)).probs
        np.testing.assert_allclose(got, want, atol=1e-5)
        runs.append(got)
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p) * 0.5)
    assert np.abs(runs[0] - runs[1]).max() > 1e-3  # the LoRA'd blocks ran again, not a stored answer


def test_a_store_keeps_the_frozen_blocks_output_for_the_next_run(tmp_path, examples, caplog):
    """A run writes its rows' output of the frozen blocks to the store; the next run (a new store on that
    file, more rows, as a round of the agile loop) reads them back, runs the frozen blocks over its new rows
    only, and gets the loss and gradients of a run without a store. A run under autocast takes rows computed
    either way, a float32 run (validation) the float32 rows only; `agile suggest`'s pool file is read too;
    a foreign or broken file is not."""
    from safetensors.torch import save_file

    from agile.trainer.frozen_store import FrozenStore
    from agile.trainer.train import LeanLabelLoss, enable_lora

    model = load_model(str(make_tiny_preset(tmp_path / "preset", num_layers=4)))
    params = random_lora(model, lambda m: enable_lora(m, 4, ALL_TARGETS, blocks=2))
    tokenizer = PromptTokenizer.from_model(model)
    label_ids = tokenizer.label_ids(TEMPLATE.labels)
    rows = encode_rows(model, TEMPLATE, examples, TrainSettings())
    home, prefix, checksum = tmp_path / "home", tokenizer.shared_prefix(TEMPLATE), model.agile_info.checksum

    def run(some_rows, store):
        lean = LeanLabelLoss(model, tokenizer, TEMPLATE, label_ids, some_rows, frozen=2, store=store)
        ran, real = [], lean.lean.hidden_states
        lean.lean.hidden_states = lambda *a, **k: ran.append(a[0].shape[0]) or real(*a, **k)
        targets = torch.as_tensor(examples.labels[: len(some_rows)])
        return loss_and_grads(params, lean, np.arange(len(some_rows)), targets, "cpu"), ran

    first = FrozenStore(home, checksum, 2, prefix)
    assert run(rows[:5], first)[1] == [1, 5]  # the prompt head, then 5 rows
    first.save()
    second = FrozenStore(home, checksum, 2, prefix)
    got, ran = run(rows, second)
    assert ran == [1, 3]  # the 3 rows the first run did not have
    assert_same_loss_and_grads(got, run(rows, None)[0])
    second.save()
    assert run(rows, FrozenStore(home, checksum, 2, prefix))[1] == [1]  # every row read back
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run(rows, FrozenStore(home, checksum, 2, prefix))[1] == [1]  # float32 rows serve autocast too
        first.path.unlink()
        autocast = FrozenStore(home, checksum, 2, prefix)
        assert run(rows[:5], autocast)[1] == [1, 5]
        autocast.save()  # the file now holds 5 rows computed under autocast
        assert run(rows, FrozenStore(home, checksum, 2, prefix))[1] == [1, 3]  # read and computed, mixed
    assert run(rows, FrozenStore(home, checksum, 2, prefix))[1] == [1, 8]  # float32 wants its own rows

    pool = FrozenStore(home, checksum, 2, prefix, kind="pool")  # what agile suggest kept: rows 5..7
    run(rows[5:], pool)
    pool.save()
    FrozenStore(home, checksum, 2, prefix).path.unlink()
    with_pool = FrozenStore(home, checksum, 2, prefix, also="pool")
    got, ran = run(rows, with_pool)
    assert ran == [1, 5] and with_pool.read == 3  # the pool's 3 read, the other 5 computed
    assert_same_loss_and_grads(got, run(rows, None)[0])
    with_pool.save()  # the rows this run used, pool's included, in its own file
    assert run(rows, FrozenStore(home, checksum, 2, prefix))[1] == [1]

    assert FrozenStore(home, checksum, 1, prefix).path != first.path  # another frozen count, another file
    save_file({"x": torch.zeros(2)}, str(first.path), metadata={"model": "another", "frozen": "2"})
    assert run(rows, FrozenStore(home, checksum, 2, prefix))[1] == [1, 8]
    first.path.write_bytes(b"not a safetensors file")
    assert run(rows, FrozenStore(home, checksum, 2, prefix))[1] == [1, 8]
    assert "unreadable" in caplog.text
    blocked = FrozenStore(tmp_path / "a-file", checksum, 2, prefix)  # its folder cannot be made: a warning
    (tmp_path / "a-file").write_text("")
    run(rows, blocked)
    blocked.save()
    assert "could not keep the frozen blocks' output" in caplog.text


def test_training_takes_the_lean_forward_and_lands_where_keras_hubs_does(tiny, examples):
    settings = TrainSettings(learning_rate=3e-2, epochs=2, batch_size=4, compute_dtype="float32")
    runs = {}
    for engine in ("lean", "keras"):
        model = load_model(tiny)
        train(model, TEMPLATE, examples, TrainSettings(**{**settings.__dict__, "engine": engine}))
        runs[engine] = LabelScorer(model, TEMPLATE).score(list(examples.texts)).probs
    np.testing.assert_allclose(runs["lean"], runs["keras"], atol=1e-4)


def test_an_epoch_takes_every_row_once_in_batches_of_like_length():
    from agile.trainer.train import shuffled_batches

    rng = np.random.default_rng(0)
    widths = rng.integers(20, 128, size=203)
    epochs = [shuffled_batches(np.random.default_rng(5), widths, 8) for _ in range(2)]
    assert [b.tolist() for b in epochs[0]] == [b.tolist() for b in epochs[1]]  # the seed decides
    batches = epochs[0]
    assert sorted(np.concatenate(batches).tolist()) == list(range(203)) and max(map(len, batches)) == 8
    padded = sum(len(b) * widths[b].max() for b in batches)
    shuffled = rng.permutation(203)
    at_random = sum(len(b) * widths[b].max() for b in np.array_split(shuffled, len(batches)))
    assert padded < 0.8 * at_random  # positions computed: rows of like length share a batch
    second = shuffled_batches(np.random.default_rng(6), widths, 8)
    assert [b.tolist() for b in second] != [b.tolist() for b in batches]  # each epoch its own order
    plain = shuffled_batches(np.random.default_rng(5), widths, 8, by_length=False)  # as before: cut in order
    assert np.concatenate(plain).tolist() == np.random.default_rng(5).permutation(203).tolist()


def test_an_unknown_training_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be 'lean' or 'keras'"):
        TrainSettings(engine="fast")
