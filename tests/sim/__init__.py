"""apcsim/sim: the roofline cost model with bring-your-own models, GPUs and profiles."""
