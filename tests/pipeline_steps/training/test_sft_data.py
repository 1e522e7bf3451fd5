"""Fine-tuning rows: the batch layout, the epoch order and its resume, the data sources."""
import json

import sentencepiece as spm
import torch

from pipeline_steps.training import sft_data
from pipeline_steps.training.sft_data import EpochBatches, collate


def test_collate_pads_with_eos_and_marks_bos_and_prompt():
    tokens, prompt = collate([([5, 6], [7]), ([], [8, 9, 10, 11])], bos=1, eos=2)
    assert tokens.tolist() == [[1, 5, 6, 7, 2, 2], [1, 8, 9, 10, 11, 2]]
    # a conditional row's prompt is BOS + its prompt; a whole-sequence row has none (all response)
    assert prompt.tolist() == [[True, True, True, False, False, False], [False] * 6]


def test_each_epoch_visits_every_row_once_and_a_resume_sees_the_same_batches():
    rows = [([], [i]) for i in range(10)]
    full = EpochBatches(rows, batch=4, total_steps=9, seed=3, bos=1, eos=2)
    assert full.steps_per_epoch == 3
    batches = [b[0][:, 1].tolist() for b in full]
    for epoch in range(3):
        seen = sum(batches[3 * epoch:3 * epoch + 3], [])
        assert sorted(seen) == list(range(10))
    assert batches[:3] != batches[3:6]  # a new order per epoch
    resumed = EpochBatches(rows, batch=4, total_steps=9, seed=3, bos=1, eos=2, start_step=lambda: 5)
    assert [b[0][:, 1].tolist() for b in resumed] == batches[5:]
    ranks = [EpochBatches(rows, 4, 9, 3, 1, 2, rank=r, world=2) for r in (0, 1)]
    for step in range(9):  # the ranks share each batch, no row twice
        assert sorted(sum((r.indices(step).tolist() for r in ranks), [])) == sorted(full.indices(step).tolist())


def test_a_last_batch_smaller_than_the_ranks_is_dropped_and_shares_are_equal():
    rows = [([], [i]) for i in range(17)]
    assert sft_data.steps_per_epoch(17, 8, world=1) == 3 and sft_data.steps_per_epoch(17, 8, world=2) == 2
    ranks = [EpochBatches(rows, 8, 4, seed=0, bos=1, eos=2, rank=r, world=2) for r in (0, 1)]
    for step in range(4):
        shares = [r.indices(step) for r in ranks]
        assert len(shares[0]) == len(shares[1]) == 4 and not set(shares[0]) & set(shares[1])
    odd = [EpochBatches(rows[:7], 4, 2, seed=0, bos=1, eos=2, rank=r, world=2) for r in (0, 1)]
    assert [len(r.indices(1)) for r in odd] == [1, 1]  # 3 rows left: one each, the third dropped


def test_reversal_rows_keep_the_prompt_for_prompted_groups(tmp_path, tiny_data):
    from pipeline_steps.data.task_sources import reversal

    for name, rows in reversal.generate(2, 2, 2, seed=0).items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data["tokenizer"] / "tokenizer.model"))
    rows = sft_data.reversal_rows(tmp_path, sp)
    first = reversal.load_folder(tmp_path)["all_prompts_train"][0]
    assert rows[0] == sft_data.encode_pair(sp, first["prompt"], first["completion"]) and rows[0][0]


def test_conditional_rows_are_windows_of_train_documents(tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data["tokenizer"] / "tokenizer.model"))
    rows = sft_data.conditional_rows(tiny_data["corpus"], sp, pairs=30, prompt_tokens=6, response_tokens=10, seed=0)
    assert len(rows) == 30 and all(len(p) == 6 and len(r) == 10 for p, r in rows)
    texts = {split: [sp.encode(json.loads(line)["text"]) for line in open(tiny_data["corpus"] / f"{split}.jsonl")]
             for split in ("train", "val")}

    def inside(window, docs):
        return any(window == doc[i:i + len(window)] for doc in docs for i in range(len(doc) - len(window) + 1))

    assert all(inside(p + r, texts["train"]) for p, r in rows)
    assert not any(inside(p + r, texts["val"]) for p, r in rows)
    assert rows == sft_data.conditional_rows(tiny_data["corpus"], sp, 30, 6, 10, seed=0)  # seeded


def test_a_pair_keeps_the_responses_leading_space_as_one_encoding_would(tiny_data):
    sp = spm.SentencePieceProcessor(model_file=str(tiny_data["tokenizer"] / "tokenizer.model"))
    prompt, response = sft_data.encode_pair(sp, "the river", " was light.")
    assert prompt + response == sp.encode("the river was light.")
    assert torch.tensor(prompt).numel() == len(sp.encode("the river"))
