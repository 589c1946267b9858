"""Training views: batched CutPaste, scar and jitter on the training device."""
