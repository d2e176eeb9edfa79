"""vlsa's safetensors files: a model is f32 tensors under the names of docs/DESIGN.md plus the
configuration JSON under the metadata key `vlsa.config`; a training checkpoint adds the AdamW
moments `optim.m.<name>` / `optim.v.<name>` of every trainable tensor and the training state
(step, options, data fingerprint, log) as JSON under `vlsa.checkpoint`, in the layout
`vlsa train` writes, so either tool resumes the other's checkpoints.

Every write goes to a temporary file beside the target that is renamed into place, so a reader
(or a crash) never sees half a file."""
import json
import os
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import config_json, parse_config
from .model import VLSA

CONFIG_KEY = "vlsa.config"
CHECKPOINT_KEY = "vlsa.checkpoint"
OPTIMIZER_PREFIX = "optim."


class WeightsError(ValueError):
    """A file that is not a vlsa model (or checkpoint) of the expected shape, named in the message."""


def read_file(path):
    """(tensors as float32 CPU tensors by name, metadata dict) of a safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name).to(torch.float32) for name in f.keys()}
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def write_file(path, tensors, metadata):
    """Writes float32 contiguous copies of `tensors` atomically (temporary file, then rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        # Copies: safetensors refuses tensors that share memory (views, a shared zero moment).
        data = {n: t.detach().to("cpu", torch.float32).contiguous().clone() for n, t in tensors.items()}
        save_file(data, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def model_tensors(model):
    """Every tensor of a model file: parameters and buffers under their vlsa names."""
    return dict(model.state_dict())


def load_state(model, tensors, source):
    """Copies `tensors` (exactly the model's names and shapes) into `model`, refusing any missing,
    extra, misshapen or non-finite tensor with a message naming it."""
    state = model.state_dict()
    for name, want in state.items():
        if name not in tensors:
            raise WeightsError(f"{source}: tensor {name} {list(want.shape)} is missing")
        t = tensors[name]
        if tuple(t.shape) != tuple(want.shape):
            raise WeightsError(f"{source}: tensor {name} has shape {list(t.shape)} but the config needs {list(want.shape)}")
        if not torch.isfinite(t).all():
            raise WeightsError(f"{source}: tensor {name} holds a non-finite value")
    extra = sorted(set(tensors) - set(state))
    if extra:
        raise WeightsError(f"{source}: unexpected tensor {extra[0]} (not part of a model with this config)")
    model.load_state_dict({n: tensors[n] for n in state}, strict=True)


def load_model(path, device="cpu"):
    """(model, optimizer tensors, metadata) of a model file or a training checkpoint."""
    tensors, meta = read_file(path)
    if CONFIG_KEY not in meta:
        raise WeightsError(f"{path}: no `{CONFIG_KEY}` entry in the metadata; this is not a vlsa model")
    config = parse_config(meta[CONFIG_KEY], source=str(path))
    optim = {}
    if CHECKPOINT_KEY in meta:
        optim = {n: t for n, t in tensors.items() if n.startswith(OPTIMIZER_PREFIX)}
        tensors = {n: t for n, t in tensors.items() if not n.startswith(OPTIMIZER_PREFIX)}
    model = VLSA(config)
    load_state(model, tensors, str(path))
    return model.to(device), optim, meta


def save_model(model, path):
    """Writes a model file vlsa loads (`vlsa segment`, `vlsa eval`, `vlsa train --model`)."""
    write_file(path, model_tensors(model), {CONFIG_KEY: config_json(model.config)})


def save_checkpoint(model, moments, state, path):
    """Writes a training checkpoint: the model, `optim.m.<name>` / `optim.v.<name>` from
    `moments` (name -> (m, v)) for every trainable tensor, and `state` (vlsa's training state:
    step, options, data, log) as JSON under `vlsa.checkpoint`. Refuses non-finite weights and
    leaves any previous file in place."""
    tensors = model_tensors(model)
    for name, p in model.trainable():
        m, v = moments[name]
        tensors[f"{OPTIMIZER_PREFIX}m.{name}"] = m.reshape(p.shape)
        tensors[f"{OPTIMIZER_PREFIX}v.{name}"] = v.reshape(p.shape)
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise WeightsError(
                f"the weights are not finite after step {state['step']} (tensor {name}); {path} was not overwritten (try a lower --lr)"
            )
    meta = {CONFIG_KEY: config_json(model.config), CHECKPOINT_KEY: json.dumps(state, separators=(",", ":"))}
    write_file(path, tensors, meta)
