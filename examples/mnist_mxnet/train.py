"""Train LeNet-5 on MNIST with MXNet Gluon, single process or parameter-server (kvstore dist_sync).

Runs in the MXNet environment (``.venv-mxnet``: MXNet 1.9.1 needs numpy<1.24).
Run it directly (``.venv-mxnet/bin/python train.py --epochs 3``) or as a job:
``workbench.submit("train.py", framework="mxnet")`` (single process) or
``workbench.submit("train.py", framework="mxnet", workers=2, ps=1)``: the
launcher starts a scheduler, the servers and the workers, all running this
script with ``DMLC_ROLE`` etc. set; ``import mxnet`` turns the scheduler and
server processes into ps-lite nodes that exit when the workers are done.
Worker 0 writes TensorBoard scalars (tensorboardX, no TensorFlow needed) to
$WORKBENCH_LOG_DIR and one checkpoint folder per epoch to
$WORKBENCH_CHECKPOINT_DIR (see model.py); a restarted job resumes from the
latest one.
"""

import argparse
import os
import re
import time

print(f"train.py: starting as {os.environ.get('DMLC_ROLE', 'a single process')}", flush=True)

if os.environ.get("DMLC_ROLE") == "worker":
    # Workers on one machine share its cores: oversubscribed OpenMP threads slow every one of them.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["DMLC_NUM_WORKER"]))))

import mxnet as mx  # noqa: E402  (a scheduler or server runs here, inside the import, and exits)
import numpy as np  # noqa: E402
from model import build_lenet, load_checkpoint, save_checkpoint  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402

from workbench import runtime  # noqa: E402
from workbench.datasets import mnist  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per worker")
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


def latest_checkpoint(folder):
    found = [(int(m.group(1)), p) for p in folder.glob("ckpt-*") if (m := re.fullmatch(r"ckpt-(\d+)", p.name))]
    return max(found) if found else (0, None)


def shard(n, epoch, seed, rank, workers):
    """This worker's example indices for ``epoch``: one shuffle for all, equal-sized shards
    (dist_sync waits for every worker at every step, so all must take the same number)."""
    order = np.random.RandomState(seed + epoch).permutation(n)
    per_worker = n // workers
    return order[rank * per_worker : (rank + 1) * per_worker]


def evaluate(net, x, y):
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    losses, hits = [], 0
    for i in range(0, len(x), 1024):
        logits = net(mx.nd.array(x[i : i + 1024]))
        labels = mx.nd.array(y[i : i + 1024])
        losses.append(loss_fn(logits, labels).asnumpy())
        hits += int((logits.argmax(axis=1) == labels).sum().asscalar())
    return float(np.concatenate(losses).mean()), hits / len(x)


def main():
    args = parse_args()
    ctx = runtime.context()
    mx.random.seed(args.seed)
    distributed = "DMLC_ROLE" in os.environ
    kv = mx.kv.create("dist_sync" if distributed else "device")
    rank, workers = kv.rank, kv.num_workers
    chief = rank == 0
    # ps-lite numbers workers in the order they reach the scheduler, not by replica index.
    print(f"replica {ctx.role}-{ctx.index}: kvstore {kv.type}, rank {rank} of {workers}", flush=True)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = mnist.load_data(limit=args.limit)
    net = build_lenet()
    net.initialize(mx.init.Xavier())
    net.hybridize()
    # Under dist_sync the servers run the optimizer on the summed gradients of all workers;
    # step() below divides by the global batch so that it is the mean.
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": args.lr}, kvstore=kv)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, ckpt = latest_checkpoint(ctx.checkpoint_dir)
    if ckpt is not None:
        load_checkpoint(ckpt, net, None if distributed else trainer)
        print(f"resumed from {ckpt.name} (epoch {start_epoch})", flush=True)

    writers = {}
    if chief:
        writers = {run: SummaryWriter(str(ctx.log_dir / run)) for run in ("train", "validation")}
    steps_per_epoch = len(x_train) // workers // args.batch_size
    for epoch in range(start_epoch + 1, args.epochs + 1):
        t0 = time.time()
        mine = shard(len(x_train), epoch, args.seed, rank, workers)
        total = 0.0
        for step in range(steps_per_epoch):
            batch = mine[step * args.batch_size : (step + 1) * args.batch_size]
            x, y = mx.nd.array(x_train[batch]), mx.nd.array(y_train[batch])
            with autograd.record():
                loss = loss_fn(net(x), y)
            loss.backward()
            trainer.step(args.batch_size * workers)
            total += float(loss.mean().asscalar())
            if chief and (step + 1) % 100 == 0:
                writers["train"].add_scalar(
                    "batch_loss", float(loss.mean().asscalar()), (epoch - 1) * steps_per_epoch + step + 1
                )
        train_loss = total / max(steps_per_epoch, 1)  # this worker's shard
        if chief:
            val_loss, val_acc = evaluate(net, x_val, y_val)
            print(
                f"epoch {epoch}/{args.epochs} loss={train_loss:.4f} val_loss={val_loss:.4f} "
                f"val_accuracy={val_acc:.4f} ({time.time() - t0:.1f} s)",
                flush=True,
            )
            writers["train"].add_scalar("epoch_loss", train_loss, epoch)
            writers["validation"].add_scalar("epoch_loss", val_loss, epoch)
            writers["validation"].add_scalar("epoch_accuracy", val_acc, epoch)
            for w in writers.values():
                w.flush()
            path = ctx.checkpoint_dir / f"ckpt-{epoch:04d}"
            # The optimizer state lives on the servers under dist_sync; only the weights are saved then.
            save_checkpoint(path, net, None if distributed else trainer)
            runtime.record_checkpoint(path, epoch, loss=train_loss, val_loss=val_loss, val_accuracy=val_acc)
        if distributed:
            kv._barrier()  # the epoch's checkpoint is whole before any worker goes on (or fails)
        if args.fail_at_epoch == epoch and ctx.attempt == 0:
            raise SystemExit(f"failing on purpose after epoch {epoch} (--fail-at-epoch)")
        if args.sleep:
            time.sleep(args.sleep)

    # Every worker prints this: under dist_sync they pull the same weights, so it is the same number.
    checksum = sum(float(p.data().astype("float64").sum().asscalar()) for p in net.collect_params().values())
    print(f"weights checksum={checksum:.6f}", flush=True)
    if chief:
        test_loss, test_acc = evaluate(net, x_test, y_test)
        print(f"test_loss={test_loss:.4f} test_accuracy={test_acc:.4f}", flush=True)
        for w in writers.values():
            w.close()


if __name__ == "__main__":
    main()
