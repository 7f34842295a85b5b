"""apcsim/parity: step-by-step decision parity with the real vLLM."""
