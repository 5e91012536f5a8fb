"""The simulation stage: profiles -> agents (`population`, `agents`), groups and the
communication schema (`grouping`, `communication`, `routing`), the round loop (`engine`),
the stage (`run`), its records (`schemas`), report and shard merge."""
