"""Training stage: SFT and DPO on generated chat data with Lightning (see docs/train.md)."""
