"""vlsa's vision-language segmentation model in PyTorch: the model of docs/DESIGN.md as an
nn.Module, vlsa's safetensors model and checkpoint files both ways, and DistributedDataParallel
training (`torchrun -m vlsa_torch.train`) that follows `vlsa train`."""
from .config import ConfigError, config_json, parse_config
from .model import VLSA, em_iterations, loss
from .weights import load_model, save_checkpoint, save_model

__all__ = ["VLSA", "ConfigError", "config_json", "em_iterations", "load_model", "loss", "parse_config",
           "save_checkpoint", "save_model"]
