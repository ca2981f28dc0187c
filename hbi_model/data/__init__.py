"""Data: the synthetic video-text set (the default, no download), real data sets from their public
annotation files and a folder of videos, decoding, tokenisation and batching."""

from hbi_model.data.collate import collate
from hbi_model.data.synthetic import SyntheticVideoText
from hbi_model.data.tokenizer import CLIPTextTokenizer, WordTokenizer

__all__ = ["collate", "SyntheticVideoText", "CLIPTextTokenizer", "WordTokenizer"]
