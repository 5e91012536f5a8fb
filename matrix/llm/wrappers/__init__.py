"""LLM wrappers, one job each, all speaking the `StreamingLLM` protocol of the backend they
wrap (Concordia's pattern: a wrapper around a language model is itself a language model).

`matrix.llm.role_llm.build_role_llm` stacks them, outermost first:

    counted    requests, batches, batch size and time in the role's ledger   (ledgered.py)
    cached     the persistent call cache; only misses go on, as one batch    (cached.py)
    budgeted   the run's token/cost cap, checked before each sub-batch       (budgeted.py)
    paid       tokens and cost in the ledger as each row is paid for         (ledgered.py)
    streamed   every row reported exactly once, whether the backend streams  (streamed.py)
    serialized one call at a time into a backend that cannot take two        (serialized.py)
    backend

Raw text completion (`RoleLLM.complete`) has the same stack over `RawPrompts` (raw.py), which
carries each prompt as a one-message chat of role "raw" to the backend's `complete`.

Along the stack `on_result(index, completion)` reports each row the backend answered, as it
is paid for, with `index` re-addressed to the caller's batch at each layer that sends a
subset; `ContextOverflow.row` is re-addressed the same way.
"""
