"""Initialisation of the new modules as the authors' code has it, applied by walking the model's modules
(CLIP, loaded or random, is left as it is):

- weight heads: Linear weights N(0, 0.02), biases 0 (their `init_weights`, applied to every Linear before
  the hierarchy is built);
- TCBlock: Linear weights truncated normal (std 0.02, cut at +-2), biases 0, LayerNorm weight 1 and bias 0;
- Banzhaf estimators: Q, K, V (no bias) xavier-uniform with gain 1.414; their convolutions keep PyTorch's
  default, as do the CTMs and the temporal module."""

from torch import nn

from hbi_model.heads import BanzhafEstimator, WeightHead
from hbi_model.hierarchy import TCBlock

INITS = ("reference", "pytorch")


def _weight_head(head):
    for layer in head.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)


def _tc_block(block):
    for layer in block.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02, a=-2.0, b=2.0)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.LayerNorm):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def _estimator(estimator):
    for matrix in (estimator.Q, estimator.K, estimator.V):
        nn.init.xavier_uniform_(matrix, gain=1.414)


def reference_init(model, skip=("encoders",)):
    """Re-initialise `model`'s weight heads, TCBlocks and Banzhaf estimators as the authors do; modules
    under the names in `skip` (the CLIP encoders) are not touched. Returns the number of modules set."""
    count = 0
    for name, module in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        for kind, apply in ((WeightHead, _weight_head), (TCBlock, _tc_block), (BanzhafEstimator, _estimator)):
            if isinstance(module, kind):
                apply(module)
                count += 1
    return count


def initialise(model, kind):
    """kind "reference": the authors' initialisation; "pytorch": PyTorch's defaults, as constructed."""
    if kind not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {kind!r}")
    return reference_init(model) if kind == "reference" else 0
