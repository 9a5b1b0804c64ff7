"""The classic "hello" character LSTM: learn h,e,l,l -> e,l,l,o and print the predictions."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from seqjax import cells, checks, layers, losses, recurrent, train

VOCAB = "helo"
INPUTS, TARGETS = "hell", "ello"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:                                                            # a flag takes effect or is refused
        checks.check_int(args.hidden_size, "--hidden-size")
        checks.check_int(args.steps, "--steps")
        checks.check_int(args.seed, "--seed", minimum=0)
        checks.check_float(args.learning_rate, "--learning-rate", minimum=0.0, strict_minimum=True)
    except ValueError as err:
        parser.error(str(err))

    encode = lambda s: jnp.array([VOCAB.index(ch) for ch in s])  # noqa: E731
    batch = (jax.nn.one_hot(encode(INPUTS), len(VOCAB))[None],    # x (B=1, T=4, E=4)
             encode(TARGETS)[None])                               # y (1, 4)

    layer = recurrent.layer(cells.make("lstm", args.hidden_size))
    k_rnn, k_out = jax.random.split(jax.random.key(args.seed))
    params = {"rnn": layer.init(k_rnn, len(VOCAB)), "out": layers.dense_init(k_out, args.hidden_size, len(VOCAB))}

    def logits_fn(params, x):
        outputs, _ = layer.apply(params["rnn"], x)                 # (1, 4, H)
        return layers.dense(params["out"], outputs)                 # (1, 4, V)

    def loss_fn(params, batch, key):                                # key: for dropout (none here)
        x, y = batch
        return losses.cross_entropy(logits_fn(params, x), y), {}

    trainer = train.trainer(loss_fn, train.make_optimizer("adam", args.learning_rate))
    state = trainer.init(params, jax.random.key(args.seed))
    train_step = jax.jit(trainer.train_step)                        # jit where the loop calls it
    for step in range(args.steps):
        state, metrics = train_step(state, batch)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(metrics['loss']):.4f}")
    predicted = "".join(VOCAB[i] for i in jnp.argmax(logits_fn(state.params, batch[0]), -1)[0])
    print(f"input {INPUTS!r} -> predicted {predicted!r} (target {TARGETS!r})")
    return predicted


if __name__ == "__main__":
    main()
