# Times one training step of the copy-memory DEQ-Transformer with exactly 12 forward / 12 backward solver steps.
import sys, time, jax, numpy as np, os
OLD = os.environ.get("OLD") == "1"
phase = sys.argv[1]
extra = dict(kv.split("=") for kv in sys.argv[2:])
if OLD:
  from experiments import train as T
  from experiments.configs import copy_memory_deq_transformer as cm
  config = cm.get_config()
else:
  from experiments import trainer as T
  from experiments.trainer import steps as st
  from experiments.configs.copy_memory import deq_transformer as cm
  config = cm.get_config()
for k, v in extra.items():
  *path, last = k.split("."); tgt = config
  for p in path: tgt = tgt[p]
  tgt[last] = eval(v)
if OLD:
  config.model.f_tol = 0.0; config.model.b_tol = 0.0
else:
  config.model.rtol = 0.0; config.model.backward_rtol = 0.0
  pass
rt, params = T.setup(config)
opt_state = rt.optimizer.init(params)
memory = (T if OLD else st).init_memory(rt, params, config.batch_size)
x, y = (jax.device_put(a) for a in rt.task.train_batch(0))
use_jac = False
fn = (T if OLD else st).train_step
step = jax.jit(lambda *a: fn(rt, phase, *a, use_jac=use_jac))
t = time.time(); out = jax.block_until_ready(step(params, opt_state, memory, x, y, 900)); print("compile", round(time.time() - t, 1))
print({k: float(np.mean(v)) for k, v in out[3].items() if "steps" in k})
ts = []
for i in range(6):
  t = time.perf_counter(); jax.block_until_ready(step(params, opt_state, memory, x, y, 900)); ts.append(time.perf_counter() - t)
print("OLD" if OLD else "NEW", phase, extra, "median ms %.0f min %.0f" % (1e3 * np.median(ts), 1e3 * min(ts)))
