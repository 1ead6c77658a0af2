"""The DeepSeek-V4 inference engine: requests in, tokens out, over the heterogeneous paged KV cache.

Public API (the only entry points):

    from deepscout.model_runtime.engine import Engine, EngineConfig, GenerationRequest, SamplingParams

    engine = Engine(model, EngineConfig(kv_dtype="float32", num_blocks=1024, prefill_chunk=512))
    rid = engine.add_request(GenerationRequest(
        prompt_ids=[...],                 # the whole prompt (a session turn: the whole conversation so far)
        max_new_tokens=256,
        sampling=SamplingParams(temperature=0.0, top_p=1.0, seed=0, logprobs=False,
                                logits_processor=None),   # per-row hook, e.g. a grammar mask
        stop_token_ids=[eos_id],
        deadline=time.monotonic() + 30,  # optional; honoured between steps
        cancel=threading.Event(),        # optional; honoured between steps (or engine.cancel(rid))
        session_id="chat-42",            # optional; append-only conversation kept between turns
    ))
    while engine.has_unfinished():
        for out in engine.step():        # list[RequestOutput]: requests that produced tokens or finished
            out.request_id, out.new_token_ids, out.token_ids, out.logprobs,
            out.finished, out.finish_reason,  # FinishReason.STOP | LENGTH | CANCELLED | DEADLINE
            out.prompt_tokens, out.reused_tokens, out.prefilled_tokens
    outputs = engine.generate([request, ...])   # runs steps until these finish; outputs in request order
    engine.cancel(rid)

`add_request` validates (RequestError) and raises `CapacityError` when a prompt can never fit the pool.
One step runs one forward over a packed ragged batch: every decoding sequence gets one token, the rest of
the step's token budget goes to prefill chunks (`prefill_chunk`, ending on 128-token block boundaries so
state snapshots can be taken there). When the block pool runs out, `pool_policy="queue"` admits a request
only once blocks for its prompt + max_new_tokens are free; `"preempt"` allocates as it goes and, when
needed, preempts the most recently admitted sequence (its cache freed) and recomputes it later — sampling is
seeded per position, so its output is unchanged.

Sessions: a request with `session_id` keeps its sequence (state slot + blocks) when it finishes; the next
request of the session whose prompt extends the tokens already processed prefills only the new tokens.
Otherwise the prefix cache (chained hashes of full 128-token blocks, tokens verified) plus a state snapshot
at a block boundary gives the longest reusable prefix; sequences sharing a prefix share its blocks.
"""
