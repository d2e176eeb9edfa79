// The attention kernels' loads through functions (include/attention_core.wgsl), from storage:
// vec4 i of q, k, v, d_out, out and of grad_a (the stored score gradient). Included by
// attention.wgsl and attention_subgroup.wgsl; attention_texture.wgsl fetches the same from
// textures.

fn load_q(i: u32) -> vec4<f32> {
    return q[i];
}
fn load_k(i: u32) -> vec4<f32> {
    return k[i];
}
fn load_v(i: u32) -> vec4<f32> {
    return v[i];
}
fn load_d_out(i: u32) -> vec4<f32> {
    return d_out[i];
}
fn load_out(i: u32) -> vec4<f32> {
    return out[i];
}
fn load_scores(i: u32) -> vec4<f32> {
    return grad_a[i];
}
