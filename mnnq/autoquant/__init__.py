"""The auto-quant job: search per-layer weight settings under an error budget."""
