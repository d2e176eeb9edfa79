// The segmentation losses and argmax (include/loss_core.wgsl: the math, parameter block,
// bindings and entry points) with the logits and the Dice statistics read from storage: the
// module for adapters without texture operands (Gpu::texture_operands).

#include "loss_core.wgsl"

fn load_logit(j: u32) -> f32 {
    return logits[j];
}
fn load_stat(i: u32) -> f32 {
    return stats[i];
}
