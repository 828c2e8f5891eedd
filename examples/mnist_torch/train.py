"""Train LeNet-5 on MNIST with PyTorch, single process or DistributedDataParallel.

Run it directly (``python train.py --epochs 3``) or as a job
(``workbench.submit("train.py", framework="pytorch", workers=2)``). The
launcher sets ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; with ``WORLD_SIZE > 1`` the replicas train one model with DDP
(gloo on CPU, nccl on GPU), each on its own shard of every epoch. Rank 0
writes TensorBoard scalars (``torch.utils.tensorboard``) to $WORKBENCH_LOG_DIR
and one checkpoint folder per epoch to $WORKBENCH_CHECKPOINT_DIR (see
model.py), and a restarted job resumes from the latest one.
"""

import argparse
import os
import re
import sys
import time
import types

print("train.py: starting", flush=True)  # first log line: before the slow torch import

# torch.utils.tensorboard writes through tensorboard.compat, which imports TensorFlow
# whenever it is installed (5-10 s and ~500 MB per process, for nothing here).
# TensorBoard's own no-TensorFlow switch makes it use its pure-Python writer.
sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from model import LeNet, load_train_state, save_checkpoint  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

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


def setup_distributed():
    """(rank, world size, device), joining the process group when the launcher made one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        # The workbench gives each replica its own CUDA_VISIBLE_DEVICES; by hand (torchrun) use LOCAL_RANK.
        local = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.device_count() > 1 else 0
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # Replicas on one machine share its cores: oversubscribed threads slow every one of them.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return rank, world, device


def latest_checkpoint(folder):
    found = [(int(m.group(1)), p) for p in folder.glob("ckpt-*") if (m := re.fullmatch(r"ckpt-(\d+)", p.name))]
    return max(found) if found else (0, None)


def shard(n, epoch, seed, rank, world):
    """This rank's example indices for ``epoch``: one shuffle for all ranks, equal-sized shards."""
    order = np.random.default_rng(seed + epoch).permutation(n)
    per_rank = n // world
    return order[rank * per_rank : (rank + 1) * per_rank]


@torch.no_grad()
def evaluate(net, x, y, device):
    net.eval()
    logits = torch.cat([net(torch.from_numpy(x[i : i + 1024]).to(device)) for i in range(0, len(x), 1024)])
    labels = torch.from_numpy(y).to(device)
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    net.train()
    return loss, accuracy


def main():
    args = parse_args()
    ctx = runtime.context()
    torch.manual_seed(args.seed)
    rank, world, device = setup_distributed()
    chief = rank == 0
    backend = dist.get_backend() if world > 1 else "none"
    print(f"replica {ctx.role}-{ctx.index}: rank {rank} of {world} on {device} (process group: {backend})", flush=True)

    (x_train, y_train), (x_val, y_val), (x_test, y_test) = mnist.load_data(limit=args.limit)
    net = LeNet().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, ckpt = latest_checkpoint(ctx.checkpoint_dir)
    if ckpt is not None:
        state = load_train_state(ckpt)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        print(f"resumed from {ckpt.name} (epoch {start_epoch})", flush=True)
    model = DistributedDataParallel(net) if world > 1 else net

    writers = {}
    if chief:
        writers = {run: SummaryWriter(str(ctx.log_dir / run)) for run in ("train", "validation")}
    steps_per_epoch = len(x_train) // world // args.batch_size
    for epoch in range(start_epoch + 1, args.epochs + 1):
        t0 = time.time()
        mine = shard(len(x_train), epoch, args.seed, rank, world)
        total = torch.zeros(2, device=device)  # loss sum, batches
        for step in range(steps_per_epoch):
            batch = mine[step * args.batch_size : (step + 1) * args.batch_size]
            x = torch.from_numpy(x_train[batch]).to(device)
            y = torch.from_numpy(y_train[batch]).to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages gradients over the replicas here
            optimizer.step()
            total += torch.stack([loss.detach(), torch.ones((), device=device)])
            if chief and (step + 1) % 100 == 0:
                writers["train"].add_scalar("batch_loss", loss.item(), (epoch - 1) * steps_per_epoch + step + 1)
        if world > 1:
            dist.all_reduce(total)  # the epoch loss over every replica's batches
        train_loss = (total[0] / total[1].clamp(min=1)).item()
        if chief:
            val_loss, val_acc = evaluate(net, x_val, y_val, device)
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
            state = {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
            save_checkpoint(path, net, state)
            runtime.record_checkpoint(path, epoch, loss=train_loss, val_loss=val_loss, val_accuracy=val_acc)
        if world > 1:
            dist.barrier()  # the epoch's checkpoint is whole before any replica goes on (or fails)
        if args.fail_at_epoch == epoch and ctx.attempt == 0:
            raise SystemExit(f"failing on purpose after epoch {epoch} (--fail-at-epoch)")
        if args.sleep:
            time.sleep(args.sleep)

    if chief:
        test_loss, test_acc = evaluate(net, x_test, y_test, device)
        print(f"test_loss={test_loss:.4f} test_accuracy={test_acc:.4f}", flush=True)
        for w in writers.values():
            w.close()
    # Every replica prints this: under DDP they hold the same weights, so it is the same number.
    print(f"weights checksum={sum(p.double().sum().item() for p in net.parameters()):.6f}", flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
