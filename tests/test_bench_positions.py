"""The benches' MFU counts the positions and FLOPs the forward passes really compute (so it cannot pass 100%)."""

import sys
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

from agile.lean import linear_flops
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
    lean._run = lambda x, mask, *a, **k: seen.append(mask.numel()) or run(x, mask, *a, **k)  # positions a pass
    with FlopCounterMode(display=False) as flops:
        scorer.score(texts)
    counted = common.computed_positions(scorer, scorer.encode(texts)[0])
    assert counted["computed"] == sum(seen)  # the prefix pass included, once
    assert counted["passes"] == len(seen) - 1
    # Every matmul the lean forward runs, counted by torch: the linear layers and the label head (the
    # attention itself runs in one fused kernel torch does not count on CPU).
    done = sum(flops.get_flop_counts()["Global"].values())
    head = 2 * len(texts) * tiny_model.backbone.hidden_dim * len(scorer.label_ids)
    assert done - head == linear_flops(tiny_model.backbone, counted["computed"], len(texts))
    assert done - head < linear_flops(tiny_model.backbone, counted["computed"], len(texts), lean=False)
