"""hbi_model: the HBI retrieval and video-QA models built on hbi_ops (not written yet: issues 4 and 5)."""
