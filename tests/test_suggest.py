"""`agile suggest`: uncertain and spread-out suggestions, never a labelled row; in-process and from --scores."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from agile.cli.main import main
from agile.policy import Policy
from agile.prompt import PromptTemplate
from agile.tables import Chunk
from agile.trainer.suggest import suggest

POLICY = Policy(PromptTemplate(labels=("Safe", "Toxic")), "test", positive_label="Toxic", threshold=0.3)


def pool(texts: list[str], p_toxic: list[float], chunk: int = 4):
    """(chunk, probabilities) pairs as the scorer yields them, `chunk` rows at a time."""
    p = np.asarray(p_toxic, dtype=np.float64)
    probs = np.column_stack([1 - p, p])
    for start in range(0, len(texts), chunk):
        end = min(start + chunk, len(texts))
        yield Chunk(start, [f"{i:04d}" for i in range(start, end)], texts[start:end]), probs[start:end]


def test_the_most_uncertain_come_first_measured_against_the_threshold():
    texts = [f"comment number {w}" for w in ("one", "two", "three", "four", "five", "six")]
    p = [0.05, 0.29, 0.9, 0.35, 0.5, 0.31]
    chosen, seen = suggest(POLICY, pool(texts, p), n=3, factor=1, explore=0)  # uncertainty alone
    assert seen == 6
    assert chosen.texts == ["comment number six", "comment number two", "comment number four"]
    assert chosen.ids == ["0005", "0001", "0003"]  # ids as written, not row numbers
    np.testing.assert_allclose(chosen.probs[:, 1], [0.31, 0.29, 0.35])


def test_suggestions_are_spread_out_not_copies_of_one_kind():
    """Eight rewordings of one borderline comment and four other topics a little further out: with
    diversity the round covers the topics; uncertainty alone would take four rewordings."""
    same = [f"you people are the worst {w}" for w in ("ever", "today", "here", "now", "again", "still", "really",
                                                        "honestly")]
    other = ["the bridge was built by engineers", "my cat sleeps all day long", "vote in the next election please",
             "this recipe needs more garlic"]
    texts, p = same + other, [0.3] * 8 + [0.4] * 4
    alone, _ = suggest(POLICY, pool(texts, p), n=4, factor=1, explore=0)
    assert all(t in same for t in alone.texts)
    spread, _ = suggest(POLICY, pool(texts, p), n=4, factor=3, seed=0, explore=0)
    assert sum(t in same for t in spread.texts) == 1 and len(set(spread.texts)) == 4
    again, _ = suggest(POLICY, pool(texts, p), n=4, factor=3, seed=0, explore=0)
    assert again.ids == spread.ids  # deterministic for a seed


def test_labelled_empty_unscored_and_repeated_rows_are_never_suggested():
    texts = ["already labelled", "", "   ", "could not be scored", "twice", "twice", "fresh one", "fresh two"]
    p = [0.3, 0.3, 0.3, np.nan, 0.31, 0.31, 0.6, 0.7]
    chosen, _ = suggest(POLICY, pool(texts, p), n=8, excluded={"already labelled"})
    assert sorted(chosen.texts) == ["fresh one", "fresh two", "twice"]
    assert chosen.ids[chosen.texts.index("twice")] == "0004"  # the first of the repeated rows


def test_nonsense_sizes_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        suggest(POLICY, pool(["a"], [0.5]), n=0)


def test_an_exploration_share_is_drawn_at_random_whatever_the_scores_and_the_chunking():
    rng = np.random.default_rng(0)
    texts = [f"comment {i} about {w}" for i, w in enumerate(rng.choice(["rain", "cats", "votes", "bread"], 60))]
    p = rng.uniform(0.01, 0.99, 60)
    uncertain = [texts[i] for i in np.argsort(np.abs(np.log(p / (1 - p)) - np.log(0.3 / 0.7)))[:5]]
    half, _ = suggest(POLICY, pool(texts, p), n=10, factor=1, explore=0.5, seed=3)
    assert set(uncertain) <= set(half.texts) and len(set(half.texts)) == 10
    assert half.ids == suggest(POLICY, pool(texts, p), n=10, factor=1, explore=0.5, seed=3)[0].ids
    random, _ = suggest(POLICY, pool(texts, p), n=10, explore=1.0, seed=3)
    assert len(set(random.texts) & set(uncertain)) < 5  # not the most uncertain
    shuffled = rng.permutation(60)
    again, _ = suggest(POLICY, pool([texts[i] for i in shuffled], p[shuffled][::-1], chunk=7), n=10, explore=1.0,
                       seed=3)
    assert set(again.texts) == set(random.texts)  # other scores, other order, other chunks: the same draws
    other, _ = suggest(POLICY, pool(texts, p), n=10, explore=1.0, seed=4)
    assert set(other.texts) != set(random.texts)


def test_the_exploration_share_keeps_the_rules_on_labelled_empty_and_repeated_rows():
    texts = ["already labelled", "", "twice", "twice", "could not be scored", "fresh"]
    p = [0.3, 0.3, 0.9, 0.9, np.nan, 0.1]
    chosen, _ = suggest(POLICY, pool(texts, p), n=6, explore=1.0, excluded={"already labelled"})
    assert sorted(chosen.texts) == ["fresh", "twice"] and chosen.ids[chosen.texts.index("twice")] == "0002"
    with pytest.raises(ValueError, match="from 0 to 1"):
        suggest(POLICY, pool(["a"], [0.5]), n=1, explore=1.5)


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "pool.csv"
    rows = [("0012", "you are all awful people"), ("7", "what a nice day"), ("", "go away"),
            ("x1", "the weather is fine today"), ("x2", ""), ("x3", "I will hurt you"),
            ("x4", "thanks for the help"), ("x5", "nobody wants you here")]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("id", "body"), *rows])
    return path


def test_suggest_end_to_end_in_process_and_from_an_earlier_scoring(
        tiny_preset, adapter_dir, pool_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGILE_ADAPTER_PATH", str(adapter_dir))
    common = ["--adapter", "tiny-toxic", "-i", str(pool_file), "--text-column", "body", "--model", str(tiny_preset)]
    out = tmp_path / "next.csv"
    assert main(["suggest", *common, "-n", "3", "-o", str(out)]) == 0, capsys.readouterr().err
    fresh = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(fresh.columns) == ["id", "body", "p_Toxic", "p_Safe", "label"]
    assert len(fresh) == 3 and set(fresh["label"]) == {""} and "" not in set(fresh["body"])
    assert set(fresh["body"]) <= set(pd.read_csv(pool_file, dtype=str, keep_default_na=False)["body"])
    assert "3 of 8 comments to label" in capsys.readouterr().err

    scores = tmp_path / "scores.csv"
    assert main(["score", "--adapter", "tiny-toxic", "--model", str(tiny_preset), "-i", str(pool_file),
                 "--text-column", "body", "-o", str(scores)]) == 1  # the empty text fails its row
    again = tmp_path / "again.csv"
    assert main(["suggest", *common, "-n", "3", "-o", str(again), "--scores", str(scores)]) == 0
    reused = pd.read_csv(again, dtype=str, keep_default_na=False)
    assert reused["id"].tolist() == fresh["id"].tolist()  # the same choice without scoring again
    np.testing.assert_allclose(reused["p_Toxic"].astype(float), fresh["p_Toxic"].astype(float), atol=1e-5)

    labelled = tmp_path / "labelled.csv"
    fresh.assign(label="Toxic").to_csv(labelled, index=False)
    third = tmp_path / "third.csv"
    assert main(["suggest", *common, "-n", "3", "-o", str(third), "--scores", str(scores),
                 "--exclude", str(labelled)]) == 0
    assert not set(pd.read_csv(third, dtype=str)["body"]) & set(fresh["body"])


def test_scores_of_another_pool_are_refused_in_one_line(
        tiny_preset, adapter_dir, pool_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGILE_ADAPTER_PATH", str(adapter_dir))
    other = tmp_path / "other.csv"
    pd.DataFrame({"id": ["a", "b"], "p_Toxic": [0.1, 0.2], "p_Safe": [0.9, 0.8]}).to_csv(other, index=False)
    code = main(["suggest", "--adapter", "tiny-toxic", "-i", str(pool_file), "--text-column", "body",
                 "-o", str(tmp_path / "o.csv"), "--scores", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and "not the pool's, row for row" in err and "Traceback" not in err
    assert not (tmp_path / "o.csv").exists() and not list(tmp_path.glob(".o.csv*"))


def test_the_first_round_without_a_policy_is_a_random_draw_in_pool_order(pool_file, tmp_path, capsys):
    out = tmp_path / "start.csv"
    assert main(["suggest", "-i", str(pool_file), "--text-column", "body", "-n", "4", "-o", str(out)]) == 0
    start = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(start.columns) == ["id", "body", "label"] and set(start["label"]) == {""}
    pool_rows = pd.read_csv(pool_file, dtype=str, keep_default_na=False)
    where = [pool_rows.index[pool_rows["body"] == body][0] for body in start["body"]]
    assert len(start) == 4 and where == sorted(where) and "" not in set(start["body"])
    assert start["id"].tolist() == pool_rows["id"][where].tolist()  # "0012" stays "0012"
    assert "drawn at random" in capsys.readouterr().err

    again = tmp_path / "again.csv"
    assert main(["suggest", "-i", str(pool_file), "--text-column", "body", "-n", "4", "-o", str(again)]) == 0
    assert pd.read_csv(again, dtype=str, keep_default_na=False).equals(start)  # the same seed, the same draw
    rest = tmp_path / "rest.csv"
    assert main(["suggest", "-i", str(pool_file), "--text-column", "body", "-n", "8", "-o", str(rest),
                 "--exclude", str(out)]) == 0
    assert sorted(pd.read_csv(rest, dtype=str)["body"]) == sorted(set(pool_rows["body"]) - set(start["body"]) - {""})

    for flag in (["--scores", str(out)], ["--explore", "0.5"]):
        code = main(["suggest", "-i", str(pool_file), "--text-column", "body", "-o", str(tmp_path / "x.csv"), *flag])
        err = capsys.readouterr().err
        assert code == 2 and f"{flag[0]} needs --adapter" in err and "Traceback" not in err
        assert not (tmp_path / "x.csv").exists()


def test_a_sample_of_the_pool_is_scored_and_chosen_from_in_pool_order(
        tiny_preset, adapter_dir, pool_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AGILE_ADAPTER_PATH", str(adapter_dir))
    common = ["--adapter", "tiny-toxic", "-i", str(pool_file), "--text-column", "body", "--model", str(tiny_preset)]
    drawn = tmp_path / "drawn.csv"  # the first round's draw of 4: the rows a --sample 4 scores
    assert main(["suggest", "-i", str(pool_file), "--text-column", "body", "-n", "4", "-o", str(drawn)]) == 0
    out = tmp_path / "next.csv"
    assert main(["suggest", *common, "-n", "2", "--sample", "4", "--candidates", "1", "-o", str(out)]) == 0
    assert "2 of 4 sampled from 8 comments" in capsys.readouterr().err
    chosen = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert set(chosen["body"]) < set(pd.read_csv(drawn, dtype=str)["body"])
    everything = tmp_path / "all.csv"
    assert main(["suggest", *common, "-n", "7", "-o", str(everything)]) == 0  # every scorable row
    whole = pd.read_csv(everything, dtype=str, keep_default_na=False).set_index("body")["p_Toxic"].astype(float)
    np.testing.assert_allclose(chosen["p_Toxic"].astype(float), whole[chosen["body"]], atol=1e-5)  # the same scores

    for flag, said in ((["--sample", "0"], "at least 1"), (["--sample", "3", "--scores", str(drawn)], "give one")):
        code = main(["suggest", *common, "-o", str(tmp_path / "x.csv"), *flag])
        err = capsys.readouterr().err
        assert code == 2 and said in err and "Traceback" not in err and not (tmp_path / "x.csv").exists()


def test_an_output_over_a_file_the_run_reads_is_refused_and_the_file_kept(pool_file, tmp_path, capsys):
    before = pool_file.read_bytes()
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("body,label\nwhat a nice day,Safe\n")
    for out in (pool_file, tmp_path / "x" / ".." / pool_file.name, labelled):
        (tmp_path / "x").mkdir(exist_ok=True)
        code = main(["suggest", "-i", str(pool_file), "--text-column", "body", "-n", "2", "-o", str(out),
                     "--exclude", str(labelled)])
        err = capsys.readouterr().err
        assert code == 2 and "which this run reads" in err and "Traceback" not in err
    assert pool_file.read_bytes() == before and labelled.read_text() == "body,label\nwhat a nice day,Safe\n"


def test_a_policy_on_its_last_blocks_keeps_the_pools_frozen_output_for_the_next_round(
        tiny_preset, pool_file, tmp_path, monkeypatch, capsys):
    from queue_fixtures import random_adapter

    import agile.trainer.suggest as suggest_module

    monkeypatch.setenv("AGILE_HOME", str(tmp_path / "home"))
    for name, seed in (("first", 0), ("next", 1)):  # two rounds' policies: LoRA on the last of the 2 blocks
        random_adapter(tiny_preset, tmp_path / name, name, ["Toxic", "Safe"], seed, lora_blocks=1)
    pool = ["-i", str(pool_file), "--text-column", "body", "--model", str(tiny_preset)]

    def run(adapter: str, out: str, *more: str) -> tuple[pd.DataFrame, str]:
        assert main(["suggest", "--adapter", str(tmp_path / adapter), *pool, "-n", "3", "-o",
                     str(tmp_path / out), *more]) == 0
        return pd.read_csv(tmp_path / out, dtype=str, keep_default_na=False), capsys.readouterr().err

    def scored(adapter: str) -> pd.Series:  # the product's scorer, the whole model: what suggest must agree with
        main(["score", "--adapter", str(tmp_path / adapter), *pool, "-o", str(tmp_path / f"{adapter}.csv")])
        capsys.readouterr()
        table = pd.read_csv(tmp_path / f"{adapter}.csv", dtype=str, keep_default_na=False)  # row for row
        table["body"] = pd.read_csv(pool_file, dtype=str, keep_default_na=False)["body"]
        return table[table["p_Toxic"] != ""].set_index("body")["p_Toxic"].astype(float)

    fresh, err = run("first", "a.csv")
    assert "0 pool rows read back from the last suggest, 7 computed (kept in" in err
    assert any(line.startswith("frozen blocks' output") for line in err.splitlines())  # not glued to a progress bar
    assert list((tmp_path / "home" / "frozen").glob("*.pool.safetensors"))
    np.testing.assert_allclose(fresh["p_Toxic"].astype(float), scored("first")[fresh["body"]], atol=1e-5)
    again, err = run("first", "b.csv")
    assert "7 pool rows read back from the last suggest, 0 computed" in err
    pd.testing.assert_frame_equal(again, fresh)

    # The next round's policy, other LoRA weights on the same block: the frozen block's output is the same.
    following, err = run("next", "c.csv")
    assert "7 pool rows read back from the last suggest, 0 computed" in err
    np.testing.assert_allclose(following["p_Toxic"].astype(float), scored("next")[following["body"]], atol=1e-5)

    # Rows labelled since are not scored (nor suggested); the store keeps the rows this run used.
    labelled = tmp_path / "labelled.csv"
    following.iloc[:2].assign(label="Toxic").to_csv(labelled, index=False)
    rest, err = run("next", "d.csv", "--exclude", str(labelled))
    assert "5 pool rows read back from the last suggest, 0 computed" in err
    assert not set(rest["body"]) & set(following["body"][:2])

    monkeypatch.setattr(suggest_module, "POOL_STORE_BYTES", 1)  # a cap no row fits: nothing kept
    capped, err = run("next", "e.csv")
    assert "5 pool rows read back from the last suggest, 2 computed (none kept; 7 left out, over 0 MiB)" in err
    pd.testing.assert_frame_equal(capped, following)
    assert "0 pool rows read back from the last suggest, 7 computed" in run("next", "f.csv")[1]
