// The texel of a flat operand texture (kernels/src/context.rs, OperandTexture::flat) that holds
// vec4 i of the buffer it was copied from: rows of 1024 texels (4096 floats), so texel
// (i % 1024, i / 1024).

// log2 of the texels per row (OperandTexture::FLAT_ROW_FLOATS / 4).
const FLAT_SHIFT: u32 = 10u;

fn flat(i: u32) -> vec2<u32> {
    return vec2<u32>(i & ((1u << FLAT_SHIFT) - 1u), i >> FLAT_SHIFT);
}
