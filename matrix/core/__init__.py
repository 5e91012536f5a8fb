"""What makes a stage a stage: the registry of stages (`registry`), the run folder, manifest
and W&B run every stage opens (`stage`), config checks (`config_check`),
reuse of finished steps (`reuse`), the whole-loop pipeline (`pipeline`), sharding and the
joining of shards (`shard`, `merge`), and the entry points' error handling (`cli`)."""
