"""Train LeNet-5 on MNIST, single process or multi-worker (tf.distribute.MultiWorkerMirroredStrategy).

Run it directly (``python train.py --epochs 10``) or as a job
(``workbench.submit("train.py", args=[...], workers=2)``). Under the workbench
it writes TensorBoard scalars to $WORKBENCH_LOG_DIR, one ``ckpt-<epoch>.keras``
per epoch to $WORKBENCH_CHECKPOINT_DIR, and resumes from the latest one when
restarted. A custom training loop is used because Keras 3's ``fit`` does not
run under MultiWorkerMirroredStrategy (keras-team/keras#20585).
"""

import argparse
import json
import os
import re
import time

print("train.py: starting", flush=True)  # first log line: before the slow TensorFlow import

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from model import build_lenet  # noqa: E402

from workbench import runtime  # noqa: E402
from workbench.datasets import mnist  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per replica")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--limit", type=int, default=None, help="use only the first N examples of each split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to pause after each epoch (demos, tests)")
    p.add_argument(
        "--fail-at-epoch",
        type=int,
        default=None,
        help="exit with an error after this epoch on the first attempt (restart demos)",
    )
    return p.parse_args()


def strategy_for_cluster():
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    if sum(len(v) for v in config.get("cluster", {}).values()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def latest_checkpoint(folder):
    found = [(int(m.group(1)), p) for p in folder.glob("ckpt-*.keras") if (m := re.match(r"ckpt-(\d+)", p.name))]
    return max(found) if found else (0, None)


def main():
    args = parse_args()
    ctx = runtime.context()
    keras.utils.set_random_seed(args.seed)
    strategy = strategy_for_cluster()
    chief = ctx.is_chief
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas
    print(f"replica {ctx.role}-{ctx.index}: {replicas} replica(s) in sync, global batch {global_batch}", flush=True)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = mnist.load_data(limit=args.limit)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=args.seed, reshuffle_each_iteration=True)
        .batch(global_batch, drop_remainder=True)
        .with_options(options)
        .prefetch(tf.data.AUTOTUNE)
    )
    dist_train = strategy.experimental_distribute_dataset(train)

    with strategy.scope():
        model = build_lenet()
        optimizer = keras.optimizers.Adam(args.lr)
        loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction="none")

    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, ckpt = latest_checkpoint(ctx.checkpoint_dir)
    if ckpt is not None:
        model.set_weights(keras.models.load_model(ckpt, compile=False).get_weights())
        print(f"resumed from {ckpt.name} (epoch {start_epoch})", flush=True)

    def step_fn(x, y):
        with tf.GradientTape() as tape:
            probs = model(x, training=True)
            loss = tf.nn.compute_average_loss(loss_fn(y, probs), global_batch_size=global_batch)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def train_step(x, y):
        losses = strategy.run(step_fn, args=(x, y))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def evaluate(x, y):
        probs = model.predict(x, batch_size=1024, verbose=0)
        loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y, probs)))
        return loss, float(np.mean(np.argmax(probs, axis=1) == y))

    log_dir = ctx.log_dir if chief else ctx.log_dir / f".worker-{ctx.index}"
    train_writer = tf.summary.create_file_writer(str(log_dir / "train"))
    val_writer = tf.summary.create_file_writer(str(log_dir / "validation"))
    steps_per_epoch = len(x_train) // global_batch
    for epoch in range(start_epoch + 1, args.epochs + 1):
        t0 = time.time()
        total, n = 0.0, 0
        for x, y in dist_train:
            loss = float(train_step(x, y))
            total += loss
            n += 1
            if chief and n % 100 == 0:
                with train_writer.as_default(step=(epoch - 1) * steps_per_epoch + n):
                    tf.summary.scalar("batch_loss", loss)
        train_loss = total / max(n, 1)
        val_loss, val_acc = evaluate(x_val, y_val)
        print(
            f"epoch {epoch}/{args.epochs} loss={train_loss:.4f} val_loss={val_loss:.4f} "
            f"val_accuracy={val_acc:.4f} ({time.time() - t0:.1f} s)",
            flush=True,
        )
        if chief:
            with train_writer.as_default(step=epoch):
                tf.summary.scalar("epoch_loss", train_loss)
            with val_writer.as_default(step=epoch):
                tf.summary.scalar("epoch_loss", val_loss)
                tf.summary.scalar("epoch_accuracy", val_acc)
            train_writer.flush()
            val_writer.flush()
            path = ctx.checkpoint_dir / f"ckpt-{epoch:04d}.keras"
            partial = path.with_name(".partial-" + path.name)
            model.save(partial)
            partial.replace(path)  # a checkpoint is whole or absent, even if we are killed mid-save
            runtime.record_checkpoint(path, epoch, loss=train_loss, val_loss=val_loss, val_accuracy=val_acc)
        if args.fail_at_epoch == epoch and ctx.attempt == 0:
            raise SystemExit(f"failing on purpose after epoch {epoch} (--fail-at-epoch)")
        if args.sleep:
            time.sleep(args.sleep)

    test_loss, test_acc = evaluate(x_test, y_test)
    print(f"test_loss={test_loss:.4f} test_accuracy={test_acc:.4f}", flush=True)


if __name__ == "__main__":
    main()
