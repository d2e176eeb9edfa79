//! The tensors of a model, by name and shape, as a function of its configuration alone: the
//! safetensors names of docs/DESIGN.md ("Weight names"). The configuration's size checks and the
//! model's loader and initialiser both read this list, so it sits below both.

use super::Config;

/// Every tensor a model of `config` has: (name, shape), in the order of docs/DESIGN.md's weight-name table.
pub fn expected_tensors(c: &Config) -> Vec<(String, Vec<usize>)> {
    let (d, p, n) = (c.vision.width, c.patch_size, c.tokens());
    let dm = d * c.vision.mlp_ratio;
    let (w, wm) = (c.decoder.width, c.decoder.width * c.decoder.mlp_ratio);
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut push = |name: String, shape: &[usize]| v.push((name, shape.to_vec()));
    let vm = "vision_model";
    push(format!("{vm}.embeddings.patch_embedding.weight"), &[d, 3, p, p]);
    push(format!("{vm}.embeddings.class_embedding"), &[d]);
    push(format!("{vm}.embeddings.position_embedding.weight"), &[1 + n, d]);
    for part in ["weight", "bias"] {
        push(format!("{vm}.pre_layrnorm.{part}"), &[d]);
    }
    let linear = |push: &mut dyn FnMut(String, &[usize]), name: String, out: usize, inp: usize| {
        push(format!("{name}.weight"), &[out, inp]);
        push(format!("{name}.bias"), &[out]);
    };
    let norm = |push: &mut dyn FnMut(String, &[usize]), name: String, width: usize| {
        push(format!("{name}.weight"), &[width]);
        push(format!("{name}.bias"), &[width]);
    };
    for i in 0..c.vision.layers {
        let l = format!("{vm}.encoder.layers.{i}");
        norm(&mut push, format!("{l}.layer_norm1"), d);
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            linear(&mut push, format!("{l}.self_attn.{proj}"), d, d);
        }
        norm(&mut push, format!("{l}.layer_norm2"), d);
        linear(&mut push, format!("{l}.mlp.fc1"), dm, d);
        linear(&mut push, format!("{l}.mlp.fc2"), d, dm);
    }
    norm(&mut push, format!("{vm}.post_layernorm"), d);
    push("text.class_embeddings".into(), &[c.num_classes(), c.text_dim]);
    linear(&mut push, "head.visual_proj".into(), w, d);
    linear(&mut push, "head.text_proj".into(), w, c.text_dim);
    if c.em.bases > 0 {
        push("head.em.bases".into(), &[c.em.bases, w]);
        linear(&mut push, "head.em.in_proj".into(), w, w);
        linear(&mut push, "head.em.out_proj".into(), w, w);
        norm(&mut push, "head.em.norm".into(), w);
    }
    for j in 0..c.decoder.layers {
        let l = format!("head.decoder.layers.{j}");
        // Without text cross-attention (an ablation) its norm and projections do not exist.
        let (norms, attns): (&[&str], &[&str]) = if c.decoder.cross_attn {
            (&["norm1", "norm2", "norm3"], &["self_attn", "cross_attn"])
        } else {
            (&["norm1", "norm3"], &["self_attn"])
        };
        for n in norms {
            norm(&mut push, format!("{l}.{n}"), w);
        }
        for attn in attns {
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                linear(&mut push, format!("{l}.{attn}.{proj}"), w, w);
            }
        }
        linear(&mut push, format!("{l}.mlp.fc1"), wm, w);
        linear(&mut push, format!("{l}.mlp.fc2"), w, wm);
    }
    norm(&mut push, "head.decoder.norm".into(), w);
    let r = c.decoder.upsample;
    if r > 1 {
        linear(&mut push, "head.decoder.upsample".into(), w * r * r, w);
    }
    push("head.logit_scale".into(), &[1]);
    v
}
