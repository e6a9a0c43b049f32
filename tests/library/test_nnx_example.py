"""fixed_point inside a Flax NNX model trained with optax (the README's example)."""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import deqjax


class TinyDEQ(nnx.Module):
  """A DEQ classifier: z* = tanh(W z* + U x + b), logits = V z*."""

  def __init__(self, d_in, d_hidden, n_classes, rngs):
    self.cell = nnx.Linear(d_hidden, d_hidden, rngs=rngs)
    self.inject = nnx.Linear(d_in, d_hidden, rngs=rngs)
    self.head = nnx.Linear(d_hidden, n_classes, rngs=rngs)
    self.cell.kernel[...] = 0.3 * self.cell.kernel[...]

  def __call__(self, x):
    graphdef, params = nnx.split(self.cell)

    def f(params, z, u):
      return jnp.tanh(nnx.merge(graphdef, params)(z) + u)

    u = self.inject(x)
    z, info = deqjax.fixed_point(f, params, u, batch_axis=0, tol=1e-6, rtol=0.0)
    return self.head(z), info


def test_nnx_module_trained_with_optax():
  key = jax.random.key(7)
  x = jax.random.normal(key, (64, 5))
  labels = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(jnp.int32)
  model = TinyDEQ(5, 16, 2, nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    def loss_fn(model):
      logits, info = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), info

    (loss, info), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, info

  losses = []
  for _ in range(60):
    loss, info = train_step(model, optimizer)
    losses.append(float(loss))
    assert bool(jnp.all(info.converged))
  assert losses[-1] < 0.3 * losses[0], losses
  # The injection (outside the solve) and the cell (inside it) both learned.
  logits, _ = model(x)
  assert float(jnp.mean(jnp.argmax(logits, -1) == labels)) > 0.9
