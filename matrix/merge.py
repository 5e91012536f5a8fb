"""Join a sharded stage: python -m matrix.merge <simulate|generate|evaluate> run.name=... [shard.count=N]

The checks and the joining are in matrix.core.merge (and each stage's own merge module).
"""

from matrix.core.merge import main

if __name__ == "__main__":
    main()
