// Resizing (include/upsample_core.wgsl: the math, parameter block, bindings and entry points)
// with the bilinear kernels' input read from storage: the module for adapters without texture
// operands (Gpu::texture_operands), and for inputs whose buffer cannot be copied into whole
// texels (OperandTexture::flat).

#include "upsample_core.wgsl"

fn load_src(j: u32) -> f32 {
    return src[j];
}
