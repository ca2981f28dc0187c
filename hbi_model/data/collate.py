"""Batching: stack frames and masks, tokenise captions."""

import torch


def collate(items, tokenizer, max_words):
    input_ids, attention_mask = tokenizer([item["caption"] for item in items], max_words)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.stack([item["frames"] for item in items]),
        "frame_mask": torch.stack([item["frame_mask"] for item in items]),
        "video_id": [item["video_id"] for item in items],
        "caption": [item["caption"] for item in items],
        **(
            {
                "answer": torch.tensor([item["answer"] for item in items]),
                "question_type": [item["question_type"] for item in items],
            }
            if "answer" in items[0]
            else {}
        ),
    }
