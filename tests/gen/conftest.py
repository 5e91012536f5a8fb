from .doubles import sim_dir  # noqa: F401  (fixture)
