"""Decision parity with the real vLLM: replay one request sequence in apcsim and in vLLM's own
scheduler and KV cache manager, and compare every step.

    record.py       run apcsim on a config, step by step; the requests it saw and its step log
    vllm_replay.py  a script run by the vLLM venv's Python: the same requests through vLLM's
                    Scheduler with a stand-in model that emits the workload's tokens
    compare.py      the two step logs side by side: the first step that differs, a summary row
    scenarios.py    the scenario matrix the `vllm` tests and docs/parity.md run
    venv.py         where the vLLM venv is, and how to build it
    __main__.py     `python -m apcsim.parity`

apcsim never imports vllm: `vllm_replay.py` runs only in vLLM's venv, as a separate process,
and the two sides exchange JSON.
"""
