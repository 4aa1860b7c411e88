"""The pipeline's batching, replayed without compute: how many iterations a run takes and how many
decode and prefill tokens (and at which contexts) each micro-batch carries.

It follows examples/moe_pipeline/runtime/workload.cc (Workload::NextIteration / Complete): up to
`batch` requests in flight per attention worker, decode tokens first (one per request), then prompt
chunks where a micro-batch has room under `max_tokens`, each new token to the least loaded micro-batch.
The planner uses it to predict a given run (fixed lengths) iteration by iteration, and for the
steady state of continuous batching.
"""

from dataclasses import dataclass, field


@dataclass
class MicroBatch:
    decode: int = 0            # decode tokens
    prefill: int = 0           # prompt tokens
    context_sum: int = 0       # sum over tokens of the positions they attend to (position + 1)

    @property
    def tokens(self):
        return self.decode + self.prefill

    @property
    def mean_context(self):
        return self.context_sum / self.tokens if self.tokens else 0.0


@dataclass
class Iteration:
    micro_batches: list = field(default_factory=list)
    tokens_out: int = 0        # tokens generated this iteration
    decode_tokens_out: int = 0  # of which non-first tokens (time-between-tokens samples)


def replay_fixed(requests, batch, input_len, output_len, micro_batches, max_tokens):
    """One attention worker's iterations for `requests` requests of fixed lengths."""
    if max_tokens < -(-batch // micro_batches):
        raise ValueError(f"max_tokens {max_tokens} cannot hold {batch} decoding requests in {micro_batches} micro-batches")
    waiting = list(range(requests))
    running = []          # [processed, generated]
    iterations = []
    while waiting or running:
        while waiting and len(running) < batch:
            waiting.pop(0)
            running.append([0, 0])
        mbs = [MicroBatch() for _ in range(micro_batches)]
        producing = []
        for decode_pass in (True, False):
            for r in running:
                decoding = r[0] >= input_len
                if decoding != decode_pass:
                    continue
                mb = min(mbs, key=lambda x: x.tokens)
                room = max_tokens - mb.tokens
                want = 1 if decoding else input_len - r[0]
                take = min(room, want)
                if take <= 0:
                    continue
                if decoding:
                    mb.decode += take
                else:
                    mb.prefill += take
                mb.context_sum += sum(r[0] + t + 1 for t in range(take))
                if r[0] + take >= input_len + r[1]:
                    producing.append(r)
                r[0] += take
        it = Iteration(micro_batches=mbs)
        for r in producing:
            it.tokens_out += 1
            if r[1] > 0:
                it.decode_tokens_out += 1
            r[1] += 1
        running = [r for r in running if r[1] < output_len]
        iterations.append(it)
    return iterations


def production_lengths(max_context=4096, samples=4000, seed=1):
    """(input, output) pairs drawn like the pipeline's production lengths (workload.cc: log-normal,
    medians 571 / 159, sigma 0.9 / 0.8, clamped to fit max_context), from a fixed seed."""
    import math
    import random
    rng = random.Random(seed)
    out = []
    for _ in range(samples):
        o = min(max(1, round(159 * math.exp(0.8 * rng.gauss(0, 1)))), max(1, max_context // 4))
        i = min(max(1, round(571 * math.exp(0.9 * rng.gauss(0, 1)))), max_context - o + 1)
        out.append((i, o))
    return out


@dataclass
class Lengths:
    """What the model needs of a length distribution."""
    mean_input: float
    mean_output: float
    decode_context: float    # mean context a decode token attends to (weighted by tokens)
    kv_tokens: float         # KV positions reserved per request in flight: its final length, averaged
                             # over requests weighted by their time in flight (output length)
    what: str


def lengths_of(pairs, what):
    n = len(pairs)
    tokens = sum(o for _, o in pairs)
    ctx = sum(o * i + o * (o + 1) / 2 for i, o in pairs) / tokens
    return Lengths(mean_input=sum(i for i, _ in pairs) / n, mean_output=tokens / n, decode_context=ctx,
                   kv_tokens=sum(o * (i + o) for i, o in pairs) / tokens, what=what)
