"""The classic "hello" character LSTM: learn h,e,l,l -> e,l,l,o and print the predictions."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax

from seqjax import cells, recurrent

VOCAB = "helo"
INPUTS, TARGETS = "hell", "ello"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    encode = lambda s: jnp.array([VOCAB.index(ch) for ch in s])  # noqa: E731
    x = jax.nn.one_hot(encode(INPUTS), len(VOCAB))[None]          # (B=1, T=4, E=4)
    y = encode(TARGETS)[None]                                       # (1, 4)

    layer = recurrent.layer(cells.lstm(args.hidden_size))
    k_rnn, k_out = jax.random.split(jax.random.key(args.seed))
    params = {"rnn": layer.init(k_rnn, len(VOCAB)),
              "out": jax.random.normal(k_out, (args.hidden_size, len(VOCAB))) * 0.1}

    def logits_fn(params):
        outputs, _ = layer.apply(params["rnn"], x)                 # (1, 4, H)
        return outputs @ params["out"]                              # (1, 4, V)

    def loss_fn(params):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params), y).mean()

    optimizer = optax.adam(args.learning_rate)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    for step in range(args.steps):
        params, opt_state, loss = train_step(params, opt_state)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    predicted = "".join(VOCAB[i] for i in jnp.argmax(logits_fn(params), -1)[0])
    print(f"input {INPUTS!r} -> predicted {predicted!r} (target {TARGETS!r})")
    return predicted


if __name__ == "__main__":
    main()
