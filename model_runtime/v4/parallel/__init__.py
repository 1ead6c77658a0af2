"""Expert-parallel (EP) execution of DeepSeek-V4 over the GPUs of one machine, one process per rank.

`rank_group` holds the process-group facts; `expert_sharding` builds and loads one rank's model (all dense
weights, its share of the routed experts: its units of every expert, or whole experts); `lockstep_engine`
runs the engine on every rank in step with rank 0; `launcher` starts the ranks for a checkpoint directory
and serves from rank 0.
"""
