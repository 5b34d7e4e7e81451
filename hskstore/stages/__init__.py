"""The pipeline's stages: finetune -> extract -> train -> evaluate / export.

Siblings: no stage imports another; what two stages share lives in a lower layer.
"""
