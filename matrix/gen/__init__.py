"""MATRIX-Gen: scenarios from the simulation -> SFT / DPO / domain data with lineage."""
