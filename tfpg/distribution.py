"""Distribution mechanics shared by every trainer (`PolicyGradientTrainer`,
`LanguageModelTrainer`): cross-replica sums, this replica's rows of a global batch,
loss scaling, gradient all-reduce + clipping + apply, and the Keras 3 `fit` fixes for
`MultiWorkerMirroredStrategy`. On one device every function is the identity (or a
plain `optimizer.apply`).
"""

import keras
import tensorflow as tf

SUM = tf.distribute.ReduceOp.SUM


def _replica_context():
    return tf.distribute.get_replica_context()


def cross_replica_sum(value):
    """Sum over replicas inside `fit` under a strategy; identity on one device."""
    context = _replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(SUM, value)


def num_replicas():
    """Replicas in sync in the current replica context (1 outside any strategy)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def in_multi_worker_mode(strategy=None):
    """True under a `MultiWorkerMirroredStrategy` that spans more than one worker."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    check = getattr(strategy.extended, "_in_multi_worker_mode", None)  # what Keras tests
    return bool(check()) if check is not None else True


def is_chief(strategy=None):
    """False on the non-chief workers of a multi-worker strategy (they write nothing:
    no checkpoint, log, metrics or export); True everywhere else."""
    strategy = strategy or tf.distribute.get_strategy()
    if not in_multi_worker_mode(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def replica_rows(batch_size):
    """(offset, total rows) of this replica's slice in the global batch.

    `tf.distribute` splits a global batch into one chunk per replica, in chunk order
    `local_replica * num_workers + worker` (the order Keras' `_multi_worker_concat`
    undoes), and chunks may differ in size when the batch does not divide evenly
    (7 rows on 2 replicas: 4 + 3). The sizes are all-reduced, so every replica knows
    where its rows start. (Tested: several devices in one process, and one device per
    worker process; for several GPUs per worker the order is Keras'.)
    """
    context = _replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    replicas = context.num_replicas_in_sync
    replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
    per_worker = len(getattr(context.strategy.extended, "worker_devices", ())) or replicas
    workers = max(replicas // per_worker, 1)
    chunk = (replica % per_worker) * workers + replica // per_worker
    sizes = cross_replica_sum(tf.one_hot(chunk, replicas, dtype=tf.float32)
                              * tf.cast(batch_size, tf.float32))            # [replicas]
    offset = tf.reduce_sum(tf.where(tf.range(replicas) < chunk, sizes, 0.0))
    return tf.cast(offset, tf.int32), tf.cast(tf.reduce_sum(sizes), tf.int32)


def is_loss_scale_optimizer(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def scale_loss(optimizer, loss):
    """`loss` times the dynamic loss scale under a `LossScaleOptimizer` (float16)."""
    return optimizer.scale_loss(loss) if is_loss_scale_optimizer(optimizer) else loss


def apply_gradients(optimizer, gradients, variables, max_grad_norm=None):
    """All-reduces, clips by global norm and applies gradients, the same on every replica.

    `gradients` are this replica's share (their sum over replicas is the gradient of
    the global loss), scaled by the loss scale under a `LossScaleOptimizer`. Every
    replica ends with the same clipped, all-reduced gradients, so the loss scale
    optimizer's finiteness test gives the same answer everywhere (a replica that
    skipped the update while another applied it would deadlock the all-reduce).
    """
    # Dense: the global norm of IndexedSlices (embedding gradients) counts
    # repeated ids separately, which is not the norm of the gradient.
    gradients = [tf.convert_to_tensor(g) if g is not None else None for g in gradients]
    replicas = num_replicas()
    if replicas > 1:
        # Clip the global gradient, not each replica's share: all-reduce first,
        # then hand the optimizer 1/replicas of it (it sums over replicas again).
        gradients = cross_replica_sum(gradients)
    if max_grad_norm is not None:
        # Clipping commutes with the loss scale s: clip(s g, s c) = s clip(g, c).
        # Non-finite (overflowed float16) gradients come out NaN, and the loss scale
        # optimizer then skips the step and halves the scale.
        clip_norm = max_grad_norm
        if is_loss_scale_optimizer(optimizer):
            clip_norm = max_grad_norm * optimizer.dynamic_scale
        gradients, _ = tf.clip_by_global_norm(gradients, clip_norm)
    if replicas > 1:
        gradients = [g / replicas if g is not None else None for g in gradients]
    optimizer.apply(gradients, variables)


class DistributedFitMixin:
    """Makes Keras 3 `fit` work under `MultiWorkerMirroredStrategy`.

    (Also: `shuffle` defaults to False, see `fit`.)

    Two Keras 3 problems (keras-team/keras#20585, #20329), worked around here:

    * `fit` starts with a "symbolic build" that draws one batch from the dataset
      and reduces it (a dict) with a single `strategy.reduce` call;
      `MultiWorkerMirroredStrategy` cannot reduce a nested structure. The trainers
      build every variable (model, optimizer, metrics) before `fit`, so the probe
      is skipped. It is skipped under every strategy: the extra pass over the
      dataset would also advance a seeded shuffle by one epoch, so a distributed
      run would see other batches than a single-device one.
    * `fit` reduces the logs of `train_step` with `strategy.reduce("MEAN", v,
      axis=0)` in multi-worker mode, which fails for scalars ("Invalid reduction
      dimension 0 for input with 0 dimensions"). `finalize_logs` returns each
      log as a [1] tensor there; the reduction then averages the replicas and
      callbacks see scalars, as on one device.
    """

    def fit(self, *args, shuffle=False, **kwargs):
        """Keras `fit`, with `shuffle=False` by default: tfpg trains on `tf.data`
        datasets, which shuffle themselves (Keras ignores `shuffle` for them, and
        warns when it is True)."""
        return super().fit(*args, shuffle=shuffle, **kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self.built and getattr(self.optimizer, "built", False):
            return
        if in_multi_worker_mode(self.distribute_strategy):
            raise ValueError(f"{type(self).__name__}: build the model and compile "
                             "it before fit under MultiWorkerMirroredStrategy")
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def finalize_logs(self, logs):
        if in_multi_worker_mode(self.distribute_strategy):
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs
