"""`vlsa train` on PyTorch DistributedDataParallel:

    torchrun --nproc_per_node N -m vlsa_torch.train (--config CFG | --model M) --data DIR \\
        --steps N --out CKPT.safetensors [--val DIR] [--resume] [--batch B] ...

Same data order and augmentation, loss, AdamW decay groups, warm-up + cosine schedule and EM
bases update as `vlsa train`, and the same checkpoint layout, so either tool resumes the other's
checkpoints and vlsa segments with the result. `--batch` is the global batch: each of the N
processes takes its own slice of the items vlsa would draw for the step; the Dice sums and the
EM bases' batch mean are added over all processes, so a step is the step of the whole batch,
whatever N is. NCCL on CUDA (one GPU per process), gloo on CPU. Rank 0 writes the checkpoints.
"""
import argparse
import gc
import inspect
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .config import ConfigError, num_classes, parse_config
from .data import BatchStream, DataError, Dataset, field_of_view, preprocess, resize_nearest
from .init import init_model
from .model import dice_loss, loss_terms
from .weights import CHECKPOINT_KEY, OPTIMIZER_PREFIX, WeightsError, load_model, save_checkpoint, write_file

OPTION_KEYS = ("steps", "batch", "lr", "warmup", "min_lr_ratio", "weight_decay", "vision_lr_mult",
               "beta1", "beta2", "eps", "seed", "augment")


class TrainError(RuntimeError):
    """A run that cannot go on, with one sentence saying why."""


def default_options(steps):
    """`vlsa train`'s defaults (TrainOptions::new)."""
    return {"steps": steps, "batch": 8, "lr": 1e-3, "warmup": min(steps // 10, 100), "min_lr_ratio": 0.01,
            "weight_decay": 0.05, "vision_lr_mult": 1.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
            "seed": 0, "augment": True, "randomize": False}


def learning_rate(o, step):
    """Linear warm-up to lr over `warmup` steps, then a cosine down to lr * min_lr_ratio."""
    lr = float(o["lr"])
    if step <= o["warmup"]:
        return lr * step / max(o["warmup"], 1)
    progress = min((step - o["warmup"]) / max(o["steps"] - o["warmup"], 1), 1.0)
    floor = lr * o["min_lr_ratio"]
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def decays(name):
    """Weight decay applies to all but norms, biases, class/position embeddings and the logit scale."""
    return not (name.rsplit(".", 1)[-1] == "bias" or "norm" in name or "layrnorm" in name
                or "class_embedding" in name or "position_embedding" in name or name.endswith("logit_scale"))


def lr_multiplier(name, o):
    return o["vision_lr_mult"] if name.startswith("vision_model.") else 1.0


def foreground_dice(model, data, device, batch=8):
    """`vlsa eval`'s mean foreground Dice: each image cropped to its field of view where the
    configuration has `field_of_view`, the upsampled logits resized (bilinear) to that image's
    size, their argmax, background outside the crop; per class the mean over images where it
    occurs in the prediction or the truth; then the mean over classes."""
    c = model.config
    k = num_classes(c)
    sums, counted = np.zeros(k - 1), np.zeros(k - 1)
    with torch.no_grad():
        for start in range(0, len(data), batch):
            images = data.images[start:start + batch]
            boxes = [field_of_view(img) if c.get("field_of_view") else None for img in images]
            views = [img if b is None else img[b[1]:b[1] + b[3], b[0]:b[0] + b[2]] for img, b in zip(images, boxes)]
            x = preprocess(views, c["image_size"], c["pixel_mean"], c["pixel_std"]).to(device)
            logits = model(x)["logits_up"].to("cpu", torch.float32)
            for logit, img, view, b, truth in zip(logits, images, views, boxes, data.masks[start:start + batch]):
                h, w = view.shape[:2]
                sized = F.interpolate(logit[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                p = np.zeros(img.shape[:2], dtype=np.uint8)
                x0, y0 = (0, 0) if b is None else b[:2]
                p[y0:y0 + h, x0:x0 + w] = sized.argmax(dim=0).numpy().astype(np.uint8)
                for cls in range(1, k):
                    pp, tt = p == cls, truth == cls
                    total = pp.sum() + tt.sum()
                    if total > 0:
                        sums[cls - 1] += 2.0 * (pp & tt).sum() / total
                        counted[cls - 1] += 1
    per_class = [s / n for s, n in zip(sums, counted) if n > 0]
    return float(np.mean(per_class)) if per_class else 1.0


def log_csv(log):
    lines = ["step,loss,lr,val_dice"]
    for e in log:
        dice = "" if e["val_dice"] is None else f"{e['val_dice']:.6f}"
        lines.append(f"{e['step']},{e['loss']:.6f},{e['lr']:.6e},{dice}")
    return "\n".join(lines) + "\n"


def write_text_atomic(path, text):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m vlsa_torch.train", description=__doc__.split("\n\n")[0])
    start = p.add_mutually_exclusive_group()
    start.add_argument("--config", help="start from a random model of this configuration (seeded by --seed)")
    start.add_argument("--model", help="start from this model file (e.g. a pretrained one)")
    p.add_argument("--data", required=True, help="the training data set (images/NAME.png, masks/NAME.png)")
    p.add_argument("--steps", type=int, help="total training steps (the length of the schedule)")
    p.add_argument("--out", required=True, help="the checkpoint to write (and to resume from with --resume)")
    p.add_argument("--val", help="validation data set: mean foreground Dice every --val-every steps")
    p.add_argument("--resume", action="store_true", help="continue exactly from the checkpoint at --out")
    p.add_argument("--batch", type=int, help="global images per step, over all processes [default: 8]")
    p.add_argument("--lr", type=float, help="peak learning rate [default: 1e-3]")
    p.add_argument("--warmup", type=int, help="warm-up steps [default: min(100, steps / 10)]")
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay [default: 0.05]")
    p.add_argument("--vision-lr-mult", type=float, help="vision encoder lr multiplier [default: 1, 0.1 with --model]")
    p.add_argument("--seed", type=int, help="seed of the init, the data order and the augmentation [default: 0]")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--stop-at", type=int, help="stop after this step (checkpointing) without changing the schedule")
    p.add_argument("--export", help="also write the final model, without optimizer state, to this file")
    return p.parse_args(argv)


def setup_distributed():
    """(rank, world, device): torchrun's environment when present (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 or "RANK" in os.environ:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank = 0
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else torch.device("cpu")
    return rank, world, device


def start(args, device):
    """(model, options, step, log, moments or None) of a new run or of the checkpoint resumed."""
    if args.resume and os.path.exists(args.out):
        model, optim, meta = load_model(args.out)
        if CHECKPOINT_KEY not in meta:
            raise TrainError(f"{args.out} is a model file, not a training checkpoint; start a new run from it with --model instead of --resume")
        state = json.loads(meta[CHECKPOINT_KEY])
        o = state["options"]
        if args.config:
            if parse_config(open(args.config).read(), args.config) != model.config:
                raise TrainError(f"{args.config} is not the configuration of the checkpoint {args.out}; resume without --config or with the same one")
        given = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
                 "weight_decay": args.weight_decay, "vision_lr_mult": args.vision_lr_mult, "seed": args.seed}
        for key, value in given.items():
            if value is not None and not math.isclose(float(value), float(o[key]), rel_tol=1e-6):
                raise TrainError(f"--{key.replace('_', '-')} differs from the value the checkpoint {args.out} was trained with; resuming exactly needs the same options")
        if o.get("randomize", False):
            raise TrainError(
                f"{args.out} was trained with vlsa's domain randomization, which this package does not implement, so it "
                f"cannot continue that run exactly; start a new run from it with --model {args.out} instead"
            )
        o["randomize"] = False
        if args.no_augment == o["augment"]:
            raise TrainError(f"--no-augment differs from the value the checkpoint {args.out} was trained with")
        moments = {}
        for name, p in model.trainable():
            try:
                moments[name] = (optim[f"{OPTIMIZER_PREFIX}m.{name}"], optim[f"{OPTIMIZER_PREFIX}v.{name}"])
            except KeyError as e:
                raise TrainError(f"{args.out}: optimizer tensor {e.args[0]} is missing") from None
        return model.to(device), o, state["step"], state["log"], moments, state["data"]
    if args.steps is None:
        raise TrainError("--steps is required for a new run")
    seed = args.seed or 0
    if args.config:
        try:
            with open(args.config) as f:
                config = parse_config(f.read(), args.config)
        except OSError as e:
            raise TrainError(f"cannot read {args.config} ({e.strerror})") from None
        model, pretrained = init_model(config, seed), False
    elif args.model:
        model, pretrained = load_model(args.model)[0], True
    else:
        raise TrainError("a new run needs --config or --model")
    o = default_options(args.steps)
    for key in ("batch", "lr", "warmup", "weight_decay", "vision_lr_mult"):
        if getattr(args, key) is not None:
            o[key] = getattr(args, key)
    if args.vision_lr_mult is None:
        o["vision_lr_mult"] = 0.1 if pretrained else 1.0
    o["seed"], o["augment"] = seed, not args.no_augment
    if not (1 <= o["batch"] <= 4096):
        raise TrainError(f"--batch {o['batch']} must be between 1 and 4096")
    if o["warmup"] > o["steps"]:
        raise TrainError(f"--warmup {o['warmup']} is longer than the {o['steps']} steps of the run")
    return model.to(device), o, 0, [], None, None


def train(argv=None):
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    say = (lambda m: print(f"vlsa_torch: {m}", file=sys.stderr, flush=True)) if rank == 0 else (lambda m: None)
    model, o, step, log, moments, fingerprint = start(args, device)
    c = model.config
    data = Dataset(args.data, num_classes(c))
    if c["field_of_view"]:
        data.crop_to_field_of_view()
    if fingerprint is not None and data.fingerprint() != fingerprint:
        raise TrainError(f"{args.data} is not the data set {args.out} was trained on; resuming exactly needs the same data")
    val = Dataset(args.val, num_classes(c)) if args.val else None
    if o["batch"] % world:
        raise TrainError(f"the global --batch {o['batch']} does not split evenly over {world} processes")
    local = o["batch"] // world
    first_item = rank * local

    # One AdamW group per tensor: its decay and learning-rate multiplier (torch.optim.AdamW is
    # vlsa's update, in the same order). A tensor no gradient reaches is skipped, as in vlsa.
    named = model.trainable()
    groups = [{"params": [p], "name": n, "weight_decay": o["weight_decay"] if decays(n) else 0.0,
               "mult": lr_multiplier(n, o)} for n, p in named]
    optimizer = torch.optim.AdamW(groups, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"], foreach=False)
    if moments is not None:
        for name, p in named:
            m, v = moments[name]
            optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": m.to(device).reshape(p.shape).clone(),
                                  "exp_avg_sq": v.to(device).reshape(p.shape).clone()}
    em = model.head.em
    if world > 1:
        # In detached mode the EM input projection gets no gradient: DDP must expect that.
        unused = em is not None and em.grad == "detached"
        # The EM bases are updated identically on every process after the step (from the
        # all-reduced batch mean), so DDP need not sync buffers in forward.
        ddp = torch.nn.parallel.DistributedDataParallel
        sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                else {"broadcast_buffers": False})
        net = ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
                  find_unused_parameters=unused, **sync)
    else:
        net = model
    stream = BatchStream(data, o["batch"], o["seed"], o["augment"])
    stop = min(args.stop_at or o["steps"], o["steps"])
    if rank == 0:
        params = sum(p.numel() for _, p in named)
        say(f"training {params} parameters on {len(data)} images ({args.data}), global batch {o['batch']} "
            f"over {world} process{'es' if world > 1 else ''} ({local} each), {o['steps']} steps, on {device}")
    timed, timed_images, last_loss, first_step = 0.0, 0, None, step + 1
    for step in range(step + 1, stop + 1):
        clock = time.perf_counter()
        x, target = stream.items(step, first_item, local, c["image_size"], c["pixel_mean"], c["pixel_std"])
        x, target = x.to(device), target.to(device)
        out = net(x)
        ce, inter, psum, ysum = loss_terms(out["logits_up"], target)
        if world > 1:
            # Global-batch loss: the Dice sums of every process. S_hat has the global value and
            # the local gradient; the factor `world` undoes DDP's gradient averaging for the
            # Dice term (the cross-entropy is a mean, which DDP's average already makes global).
            sums = torch.stack([inter, psum, ysum]).detach()
            dist.all_reduce(sums)
            s_hat = [s + (g - s).detach() for s, g in zip((inter, psum, ysum), sums)]
            dice = dice_loss(*s_hat)
            objective = ce + world * dice - (world - 1) * dice.detach()
            ce_all = ce.detach().clone()
            dist.all_reduce(ce_all)
            value = (ce_all / world + dice.detach()).item()
        else:
            objective = ce + dice_loss(inter, psum, ysum)
            value = objective.item()
        if not math.isfinite(value):
            raise TrainError(f"the loss is not finite ({value}) at step {step}; the weights of step {step - 1} were not updated (try a lower --lr)")
        objective.backward()
        lr = learning_rate(o, step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g["mult"]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if em is not None:
            mean_mu = out["em.mu"].detach().mean(dim=0)
            if world > 1:
                dist.all_reduce(mean_mu)
                mean_mu /= world
            em.update_bases(mean_mu)
        # The log holds f32 values, as vlsa's does.
        entry = {"step": step, "loss": float(np.float32(value)), "lr": float(np.float32(lr)), "val_dice": None}
        seconds = time.perf_counter() - clock
        if step > first_step:  # the first step of a run includes one-time set-up
            timed, timed_images = timed + seconds, timed_images + o["batch"]
        log.append(entry)
        last_loss = value
        if rank == 0:
            if val is not None and (step % max(args.val_every, 1) == 0 or step == stop):
                entry["val_dice"] = float(np.float32(foreground_dice(model, val, device)))
            if step % max(args.log_every, 1) == 0 or step == stop:
                dice = "" if entry["val_dice"] is None else f", val Dice {entry['val_dice']:.4f}"
                say(f"step {step}/{o['steps']}: loss {value:.4f}, lr {lr:.3e}{dice}")
            if step % max(args.checkpoint_every, 1) == 0 or step == stop:
                save(model, optimizer, named, o, step, log, data, args.out)
    if rank == 0:
        rate = f", {timed_images / timed:.2f} images/s (steps after the first)" if timed > 0 else ""
        say(f"done: step {stop}, loss {last_loss if last_loss is None else round(last_loss, 4)}{rate}; checkpoint {args.out}")
        if args.export:
            from .weights import save_model
            save_model(model, args.export)
    if world > 1:
        # Tear down in order while the interpreter is whole: first the DDP wrapper (its reducer
        # holds the process group), then the group itself, rather than leaving both to
        # interpreter exit (see main).
        del net
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    return world > 1


def save(model, optimizer, named, o, step, log, data, out):
    moments = {}
    for name, p in named:
        st = optimizer.state.get(p, {})
        zero = torch.zeros_like(p)
        moments[name] = (st.get("exp_avg", zero), st.get("exp_avg_sq", zero))
    state = {"step": step, "options": o, "data": data.fingerprint(), "log": log}
    save_checkpoint(model, moments, state, out)
    write_text_atomic(out + ".log.csv", log_csv(log))


def main(argv=None):
    try:
        distributed = train(argv)
    except (TrainError, ConfigError, DataError, WeightsError) as e:
        print(f"vlsa_torch: {e}", file=sys.stderr)
        sys.exit(1)
    if distributed:
        # A finished distributed run leaves nothing to tear down: its files are written
        # (atomically) and its process group destroyed. Skipping the interpreter's and C++
        # static teardown avoids an abort of torch's own threads at exit ("terminate called
        # without an active exception", seen once in CI on a run whose checkpoint was complete),
        # which would make torchrun report a successful run as failed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
