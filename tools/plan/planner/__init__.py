"""m2n_plan: deployment plan search for disaggregated MoE serving (MegaScale-Infer's second half).

inputs   the files a user edits (model config, GPU catalogue, cluster, measured curves), checked
         with errors that name the file and the field
workload the pipeline's batching replayed (iterations, tokens per micro-batch)
perf     the performance model: T_a, T_e, T_c per micro-batch, the ping-pong conditions, the
         iteration time, memory, throughput per GPU and per dollar
search   the plan search: TP sizes, replicas, m, the largest batch within the limit
report   tables, --explain, the moe_pipeline command line
cli      the m2n_plan command
"""
