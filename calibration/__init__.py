"""TQ-DiT post-training quantization for any torch module with marked quantization sites.

Imports nothing from `tqdit_export`: the model, the sampler and the loss come in as arguments.
"""
