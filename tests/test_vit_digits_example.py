"""The ViT example, end to end on a few of the shipped digits."""

from pathlib import Path

import pytest
from conftest import load_script

pytest.importorskip("keras_hub")
EXAMPLE = Path(__file__).parents[1] / "examples" / "vit_digits.py"


@pytest.fixture(scope="module")
def example():
    return load_script(EXAMPLE)


def test_the_ways_cut_the_vit_into_blocks_and_train_the_top_two(example):
    task = example.build_task(None, 4)
    names = [group.name for group in example.block_groups(task)]
    assert names == ["embed", "block_1", "block_2", "block_3", "block_4", "head"]
    ways = example.transfer_ways(names)
    assert ways["head only"] == {"freeze": names[:-1]}
    decay = ways["top blocks, layer decay 0.75"]
    assert decay["freeze"] == ["embed", "block_1", "block_2"]
    assert decay["lr_multipliers"] == {"block_3": 0.5625, "block_4": 0.75, "head": 1.0}
    assert ways["LoRA rank 4 on the top blocks"]["lora"] == {"block_3": 4, "block_4": 4}


@pytest.mark.slow
def test_the_example_transfers_three_ways_each_proven(example, capsys):
    args = ["--samples", "400", "--epochs", "1", "--pretrain-epochs", "1"]
    rows = example.main(args + ["--blocks", "3"])
    assert list(rows) == [
        "head only",
        "top blocks, layer decay 0.75",
        "LoRA rank 4 on the top blocks",
    ]
    assert all(row["frozen_unchanged"] is True for row in rows.values())
    head, decay, lora = (row["trainable_params"] for row in rows.values())
    # The head: the encoder's last norm (2 x 32) and the classifier (32 x 5 + 5).
    assert head == 2 * 32 + 32 * 5 + 5
    assert head < lora < decay
    printed = capsys.readouterr().out
    assert "| LoRA rank 4 on the top blocks |" in printed
