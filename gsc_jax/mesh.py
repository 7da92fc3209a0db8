"""The device mesh and how arrays are placed on it.

One 1-D "data" mesh over every device of every process: batches are sharded over it,
the model state and everything ``frozen`` is replicated. Under ``jax.jit`` over such a
batch-sharded array every mean and sum over the batch (BN statistics included) is global.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D "data" mesh over every device, ordered by process (``process_major``). Auto
  axis type: under the Explicit default a ``bincount`` over a sharded batch raises a
  sharding type error."""
  axis_types = (jax.sharding.AxisType.Auto,)
  topology_order = jax.make_mesh((jax.device_count(),), ("data",), axis_types=axis_types)
  return jax.sharding.Mesh(np.array(process_major(topology_order.devices.flat)), ("data",),
                           axis_types=axis_types)


def process_major(devices) -> list:
  """``devices`` stably sorted by process: each process's devices then form one contiguous
  block of the batch axis, process ``p`` holding global rows ``[p*B/P, (p+1)*B/P)``, the
  rows the input pipeline gives it (data/pipeline.py ``ProcessRows``). Within a process the
  topology order of ``jax.make_mesh`` is kept; one process's mesh is unchanged."""
  return sorted(devices, key=lambda device: device.process_index)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec("data"))


def replicate(tree, mesh):
  """A pytree of host arrays, replicated over the mesh."""
  return jax.device_put(tree, replicated(mesh))


def replicated_shapes(shapes, mesh):
  """Shape/dtype tree -> abstract arrays replicated over the mesh (restore targets)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes)


def to_global_batch(local_batch: dict, mesh) -> dict:
  """This process's rows -> one global array per key, sharded over the batch axis: with
  ``make_mesh``'s device order the global batch is the processes' local batches one after
  the other, in process order."""
  sharding = batch_sharded(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in local_batch.items()}


def global_batches(dataset, num_batches: int, mesh):
  """The first ``num_batches`` batches of ``dataset`` as global arrays."""
  iterator = iter(dataset)
  for _ in range(num_batches):
    yield to_global_batch(next(iterator), mesh)


@jax.jit
def _any_row(flags):
  return jnp.max(flags) > 0


def any_process_now(flag: bool) -> bool:
  """Whether ``flag`` is True on any process, at once (every process must call it at the
  same point; a single process returns its own flag)."""
  if jax.process_count() == 1:
    return flag
  flags = multihost_utils.process_allgather(np.array([flag], np.int32))
  return bool(np.asarray(flags).any())


def any_process(flag: bool, mesh) -> jax.Array:
  """A replicated boolean scalar: whether ``flag`` is True on any process. It is computed
  on the devices, asynchronously: reading it waits for the processes' flags."""
  local = np.full((len(mesh.local_devices),), flag, np.int32)  # one row per local device
  return _any_row(jax.make_array_from_process_local_data(batch_sharded(mesh), local))
