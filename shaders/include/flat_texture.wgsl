// The texel of a flat operand texture (kernels/src/context.rs, OperandTexture::flat) that holds
// vec4 i of the buffer it was copied from: rows of 1024 texels (4096 floats), so texel
// (i % 1024, i / 1024).
//
// Why the `_texture` modules read operands this way: Mesa 22.3's lavapipe compiles a storage
// load whose address differs between lanes into a loop that builds the loaded vector one lane
// at a time through a stack slot, and some CPUs pay a store-forwarding stall on every lane (an
// AMD EPYC of family 25 model 1: 12x the cost of a gather), while a texel load is compiled as
// a gather. The textures are read-only storage textures (texture_storage_2d<rgba32float, read>):
// lavapipe inlines their loads (about 50 instructions for a vec4 on 8 lanes), whereas a sampled
// texture's textureLoad calls a shared routine that also looks up the mip level's layout per
// lane; the matmul ran 6-9 % faster on storage textures (2056 x 192 x 192: 3.65 against
// 4.0 ms; same EPYC, 2026-12-05). The launchers copy the operand into the texture first
// (Gpu::flat_operands, Gpu::dispatch_textured) where texture operands are on
// (Gpu::texture_operands: lavapipe's default); the loads use the storage kernels' own indices,
// so results are bit-identical.

// log2 of the texels per row (OperandTexture::FLAT_ROW_FLOATS / 4).
const FLAT_SHIFT: u32 = 10u;

fn flat(i: u32) -> vec2<u32> {
    return vec2<u32>(i & ((1u << FLAT_SHIFT) - 1u), i >> FLAT_SHIFT);
}

// Float i of a flat operand texture is component i % 4 of texel flat(i / 4u): the kernels that
// read single floats (losses, resize, the mask head's d_out and 1/a) write
// `textureLoad(t, flat(i / 4u))[i % 4u]` in their own load functions, since a helper taking
// the texture as a parameter does not compile for OpenGL (GLSL allows no storage image as a
// function parameter with its access qualifier).
