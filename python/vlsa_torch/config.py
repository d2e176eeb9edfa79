"""The model configuration: the JSON stored under `vlsa.config` in a model's safetensors metadata
(docs/DESIGN.md, "Configuration"), with the same defaults and the same rejection of unknown keys
as vlsa itself, so a file either tool writes loads in the other."""
import copy
import json

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# key -> default (a missing key without a default is an error); nested sections are dicts.
_TOP = {
    "image_size": None, "patch_size": None, "pixel_mean": CLIP_MEAN, "pixel_std": CLIP_STD,
    "vision": None, "text_dim": None, "classes": None, "prompts": "classes", "decoder": None,
    "em": None, "ln_eps": 1e-5, "refine": "absent", "shifts": "absent", "field_of_view": False,
    "zoom_out": "absent", "auto_zoom_out": "absent",
}
MAX_ZOOM_OUT = 8
MAX_SHIFTS = 8
MAX_UPSAMPLE = 8
_SECTIONS = {
    "vision": {"width": None, "layers": None, "heads": None, "mlp_ratio": 4, "act": "quick_gelu"},
    "decoder": {"width": None, "layers": None, "heads": None, "mlp_ratio": 4, "cross_attn": True, "upsample": 1},
    "em": {"bases": None, "iters": 3, "lambda": 1.0, "momentum": 0.9, "grad": "detached"},
}


class ConfigError(ValueError):
    """A configuration that vlsa would refuse, with one sentence naming the key at fault."""


def _fill(given, schema, where):
    if not isinstance(given, dict):
        raise ConfigError(f"{where or 'the configuration'} must be a JSON object")
    for key in given:
        if key not in schema:
            raise ConfigError(f"unknown key `{where}{key}`")
    out = {}
    for key, default in schema.items():
        if key in given:
            out[key] = given[key]
        elif default is None:
            raise ConfigError(f"missing key `{where}{key}`")
        else:
            out[key] = copy.deepcopy(default)
    return out


def parse_config(value, source="config"):
    """A complete configuration dict (every default written out) from JSON text or a dict."""
    try:
        raw = json.loads(value) if isinstance(value, (str, bytes)) else value
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from None
    try:
        c = _fill(raw, _TOP, "")
        for name, schema in _SECTIONS.items():
            c[name] = _fill(c[name], schema, name + ".")
        # `refine` (two-pass inference, docs/DESIGN.md "Refinement") is optional and left out
        # when absent; it changes how vlsa predicts, not the model this package implements.
        if c["refine"] == "absent":
            del c["refine"]
        else:
            c["refine"] = _fill(c["refine"], {"crop": None}, "refine.")
        # `shifts` (the shift ensemble, docs/DESIGN.md "Shift ensemble") likewise.
        if c["shifts"] == "absent":
            del c["shifts"]
        # `zoom_out` (docs/DESIGN.md "Zoom-out") likewise.
        if c["zoom_out"] == "absent":
            del c["zoom_out"]
        # `auto_zoom_out` (docs/DESIGN.md "Zoom-out") likewise; `enabled` defaults to false.
        if c["auto_zoom_out"] == "absent":
            del c["auto_zoom_out"]
        else:
            schema = {"classes": None, "extent": None, "enabled": False}
            c["auto_zoom_out"] = _fill(c["auto_zoom_out"], schema, "auto_zoom_out.")
        if c["prompts"] == "classes" or c["prompts"] is None:
            c["prompts"] = list(c["classes"])
        _validate(c)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return c


def _validate(c):
    s, p = c["image_size"], c["patch_size"]
    if not (isinstance(p, int) and isinstance(s, int) and p > 0 and s > 0 and s % p == 0):
        raise ConfigError(f"patch_size {p} does not divide image_size {s}")
    for what in ("vision", "decoder"):
        w, h = c[what]["width"], c[what]["heads"]
        if not (w > 0 and h > 0 and w % h == 0):
            raise ConfigError(f"{what}.heads {h} does not divide {what}.width {w}")
    if c["vision"]["act"] not in ("quick_gelu", "gelu"):
        raise ConfigError(f"vision.act {c['vision']['act']!r} is neither \"quick_gelu\" nor \"gelu\"")
    if c["em"]["grad"] not in ("detached", "unrolled"):
        raise ConfigError(f"em.grad {c['em']['grad']!r} is neither \"detached\" nor \"unrolled\"")
    if len(c["classes"]) < 2:
        raise ConfigError("a model needs at least 2 classes (class 0 is the background)")
    if len(c["prompts"]) != len(c["classes"]):
        raise ConfigError(f"{len(c['prompts'])} prompts given for {len(c['classes'])} classes")
    if c["em"]["bases"] > 0 and c["em"]["iters"] < 1:
        raise ConfigError("em.iters must be at least 1")
    if "refine" in c and not (isinstance(c["refine"]["crop"], (int, float)) and 0 < c["refine"]["crop"] <= 1):
        raise ConfigError(f"refine.crop {c['refine']['crop']} must be a fraction of the image side in (0, 1]")
    r = c["decoder"]["upsample"]
    if not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= MAX_UPSAMPLE and p % r == 0):
        raise ConfigError(
            f"decoder.upsample {r} must be between 1 and {MAX_UPSAMPLE} and divide patch_size {p} (sub-tokens per patch side)"
        )
    if "zoom_out" in c:
        k = c["zoom_out"]
        if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_ZOOM_OUT):
            raise ConfigError(f"zoom_out {k} must be between 1 and {MAX_ZOOM_OUT} (1: the image fills the model input)")
        if k > 1 and "refine" in c:
            raise ConfigError("zoom_out and refine do not combine; give one of them")
    if "auto_zoom_out" in c:
        a, k = c["auto_zoom_out"], len(c["classes"])
        if not (isinstance(a["classes"], list) and a["classes"]
                and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x < k for x in a["classes"])):
            raise ConfigError(
                f"auto_zoom_out.classes {a['classes']} must name foreground classes, 1 to {k - 1} (class 0 is the background)"
            )
        e = a["extent"]
        if not (isinstance(e, (int, float)) and not isinstance(e, bool) and 0 < e < 1):
            raise ConfigError(f"auto_zoom_out.extent {e} must be a fraction of the input's side in (0, 1)")
        if not isinstance(a["enabled"], bool):
            raise ConfigError(f"auto_zoom_out.enabled {a['enabled']!r} must be true or false")
        if "refine" in c:
            raise ConfigError("auto_zoom_out and refine do not combine; give one of them")
    if not isinstance(c["field_of_view"], bool):
        raise ConfigError(f"field_of_view {c['field_of_view']!r} must be true or false")
    if "shifts" in c:
        k = c["shifts"]
        if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_SHIFTS):
            raise ConfigError(f"shifts {k} must be between 1 and {MAX_SHIFTS} (shifts per axis; 1 is one forward)")
        if p % k:
            raise ConfigError(f"shifts {k} must divide the patch size {p}, so that each shift is whole pixels")


def config_json(c):
    """The JSON text vlsa stores (`decoder.cross_attn` written only when false,
    `decoder.upsample` only when above 1 and `auto_zoom_out.enabled` only when true, as vlsa
    does)."""
    out = copy.deepcopy(c)
    if out["decoder"].get("cross_attn", True):
        out["decoder"].pop("cross_attn", None)
    if out["decoder"].get("upsample", 1) == 1:
        out["decoder"].pop("upsample", None)
    if not out.get("field_of_view", False):
        out.pop("field_of_view", None)
    if "auto_zoom_out" in out and not out["auto_zoom_out"].get("enabled", False):
        out["auto_zoom_out"].pop("enabled", None)
    return json.dumps(out, separators=(",", ":"))


def num_classes(c):
    return len(c["classes"])


def grid(c):
    """Patches per side (h = w = S / p)."""
    return c["image_size"] // c["patch_size"]
