"""The benches' MFU counts the positions the forward passes really compute (so it cannot pass 100%)."""

import sys
from pathlib import Path

import pytest

from agile.prompt import PromptTemplate
from agile.scoring import LabelScorer, ScoringSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import common


@pytest.mark.parametrize("pipeline_rows", [0, 3])
def test_counted_positions_are_the_forward_passes(tiny_model, ethos_comments, pipeline_rows):
    texts = [*ethos_comments[:9], "", "word " * 300]
    scorer = LabelScorer(tiny_model, PromptTemplate(), ScoringSettings(128, 4, pipeline_rows=pipeline_rows))
    scorer.score(texts[:1])  # builds the lean forward
    lean, seen = scorer._lean, []
    run = lean._run
    lean._run = lambda ids, mask, caches=None: seen.append(ids.numel()) or run(ids, mask, caches)
    scorer.score(texts)
    counted = common.computed_positions(scorer, scorer.encode(texts)[0])
    assert counted["computed"] == sum(seen)  # the prefix pass included, once
    assert counted["passes"] == len(seen) - 1
