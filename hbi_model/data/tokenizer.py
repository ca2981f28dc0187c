"""Tokenisers returning fixed-length ids and masks: CLIP's (real data) and a word-level one (synthetic)."""

import torch


class WordTokenizer:
    """Whitespace words from a closed vocabulary; ids 0 = pad, 1 = start, 2 = end, 3 = unknown."""

    SPECIAL = ("<pad>", "<start>", "<end>", "<unk>")

    def __init__(self, words):
        self.vocabulary = list(self.SPECIAL) + sorted(set(words) - set(self.SPECIAL))
        self.index = {word: i for i, word in enumerate(self.vocabulary)}

    def __len__(self):
        return len(self.vocabulary)

    def __call__(self, captions, max_words):
        ids = torch.zeros(len(captions), max_words, dtype=torch.long)
        mask = torch.zeros(len(captions), max_words, dtype=torch.long)
        for row, caption in enumerate(captions):
            tokens = [1] + [self.index.get(w, 3) for w in caption.lower().split()][: max_words - 2] + [2]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            mask[row, : len(tokens)] = 1
        return ids, mask

    def decode(self, ids):
        return [self.vocabulary[i] for i in ids]


class CLIPTextTokenizer:
    """CLIP's BPE tokeniser from a local folder or hub name, padded/truncated to max_words."""

    def __init__(self, name_or_path):
        from transformers import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(name_or_path)

    def __len__(self):
        return len(self.tokenizer)

    def __call__(self, captions, max_words):
        out = self.tokenizer(
            list(captions), padding="max_length", truncation=True, max_length=max_words, return_tensors="pt"
        )
        return out["input_ids"], out["attention_mask"]

    def decode(self, ids):
        return self.tokenizer.convert_ids_to_tokens(list(ids))
