from tests.gen.doubles import sim_dir  # noqa: F401  (fixture: a hand-written simulate output)
