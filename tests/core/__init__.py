"""apcsim/core: the block pool, the scheduler, the prefix cache against a reference, isolation, fuzzing."""
