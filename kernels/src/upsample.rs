//! Resizing in PyTorch's `F.interpolate` semantics (shaders/upsample.wgsl): bilinear with
//! align_corners = false, forward and a deterministic gather backward, for logits
//! [B, K, h, w] -> [B, K, H, W] at any sizes (up or down); and nearest-neighbour resizing of u32
//! class maps (masks, predictions) with PyTorch's 'nearest' rule `src = floor(dst * in / out)`.

use crate::context::{grid, Dispatch, Gpu};
use crate::profiler::KernelLabel;
use crate::{shader, Error, GpuBuffer, Result};

shader!(SHADER, "upsample.wgsl");
shader!(TEXTURE_SHADER, "upsample_texture.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    planes: u32,
    in_h: u32,
    in_w: u32,
    out_h: u32,
    out_w: u32,
    n: u32,
    scale_h: f32,
    scale_w: f32,
    inv_scale_h: f32,
    inv_scale_w: f32,
    _pad: [u32; 2],
}

/// The shapes of one resize: `[batch, channels, in_h, in_w] -> [batch, channels, out_h, out_w]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resize {
    pub batch: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Resize {
    /// Elements of the input.
    pub fn in_len(&self) -> usize {
        self.batch * self.channels * self.in_h * self.in_w
    }

    /// Elements of the output.
    pub fn out_len(&self) -> usize {
        self.batch * self.channels * self.out_h * self.out_w
    }

    fn in_desc(&self) -> String {
        format!("[{}, {}, {}, {}]", self.batch, self.channels, self.in_h, self.in_w)
    }

    fn out_desc(&self) -> String {
        format!("[{}, {}, {}, {}]", self.batch, self.channels, self.out_h, self.out_w)
    }

    fn desc(&self) -> String {
        format!("{}->{}", self.in_desc(), self.out_desc())
    }

    fn validate(&self, what: &str) -> Result<()> {
        let empty_in = self.in_h == 0 || self.in_w == 0;
        let empty_out = self.out_h == 0 || self.out_w == 0;
        if empty_in && !empty_out {
            return Err(Error::Shape(format!(
                "{what} from {} to {}: an empty image cannot be resized to a non-empty one",
                self.in_desc(),
                self.out_desc()
            )));
        }
        Ok(())
    }

    fn check(&self, what: &str, buf: &GpuBuffer, need: usize, desc: &str) -> Result<()> {
        if buf.len() < need {
            return Err(Error::Shape(format!(
                "resize {}: {what} has {} elements but {desc} needs {need}",
                self.desc(),
                buf.len()
            )));
        }
        Ok(())
    }

    /// Per-axis scales as PyTorch computes them: `in / out` in f32.
    fn params(&self, n: usize) -> Params {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f32 / b as f32 };
        Params {
            planes: (self.batch * self.channels) as u32,
            in_h: self.in_h as u32,
            in_w: self.in_w as u32,
            out_h: self.out_h as u32,
            out_w: self.out_w as u32,
            n: n as u32,
            scale_h: ratio(self.in_h, self.out_h),
            scale_w: ratio(self.in_w, self.out_w),
            inv_scale_h: ratio(self.out_h, self.in_h),
            inv_scale_w: ratio(self.out_w, self.in_w),
            _pad: [0; 2],
        }
    }
}

/// Dispatches `entry` over `params.n` invocations, `per_group` per workgroup (its WGSL size);
/// with `src` (buffer, length), reading it from a flat texture where texture operands are on
/// and it fits (upsample_texture.wgsl).
fn launch(
    gpu: &Gpu,
    entry: &'static str,
    per_group: usize,
    params: &Params,
    buffers: &[&GpuBuffer],
    src: Option<(&GpuBuffer, usize)>,
    label: KernelLabel,
) -> Result<()> {
    let textures = src.and_then(|s| gpu.flat_operands(&[s]));
    let d = Dispatch {
        shader: &SHADER,
        entry,
        params: bytemuck::bytes_of(params),
        buffers,
        workgroups: grid((params.n as usize).div_ceil(per_group) as u32),
        label,
    };
    gpu.dispatch_textured(d, &[], &TEXTURE_SHADER, textures.as_deref())
}

/// Bilinear resize (align_corners = false) of `input` [B, K, h, w] into `output` [B, K, H, W].
pub fn bilinear(gpu: &Gpu, input: &GpuBuffer, output: &GpuBuffer, shape: &Resize) -> Result<()> {
    shape.validate("bilinear resize")?;
    shape.check("the input", input, shape.in_len(), &shape.in_desc())?;
    shape.check("the output", output, shape.out_len(), &shape.out_desc())?;
    let n = shape.out_len();
    let label = KernelLabel {
        kernel: "bilinear",
        shape: shape.desc(),
        flops: 11 * n as u64,
        bytes: 4 * (n + shape.in_len()) as u64,
    };
    // One output row per invocation (planes x H of them), 64 per workgroup.
    let rows = shape.batch * shape.channels * shape.out_h;
    if shape.out_w.is_multiple_of(4) {
        // bilinear4 stores through a vec4 view of the output (binding 5).
        let buffers = [input, output, input, output, output];
        return launch(gpu, "bilinear4", 64, &shape.params(rows), &buffers, Some((input, shape.in_len())), label);
    }
    launch(gpu, "bilinear", 64, &shape.params(rows), &[input, output], Some((input, shape.in_len())), label)
}

/// Gradient of [`bilinear`]: `d_input` [B, K, h, w] from `d_output` [B, K, H, W]; each input
/// pixel gathers its contributions (deterministic, no atomics).
pub fn bilinear_backward(gpu: &Gpu, d_output: &GpuBuffer, d_input: &GpuBuffer, shape: &Resize) -> Result<()> {
    shape.validate("bilinear resize backward")?;
    shape.check("the output gradient", d_output, shape.out_len(), &shape.out_desc())?;
    shape.check("the input gradient", d_input, shape.in_len(), &shape.in_desc())?;
    let n = shape.in_len();
    // Each output element is read by at most 2 x 2 input pixels.
    let label = KernelLabel {
        kernel: "bilinear_backward",
        shape: shape.desc(),
        flops: 8 * shape.out_len() as u64,
        bytes: 4 * (n + shape.out_len()) as u64,
    };
    let src = Some((d_output, shape.out_len()));
    launch(gpu, "bilinear_backward", 256, &shape.params(n), &[d_output, d_input], src, label)
}

/// Nearest-neighbour resize of a u32 map (e.g. class indices) `input` [B, C, h, w] into
/// `output` [B, C, H, W], PyTorch 'nearest': `src = min(floor(dst * (in / out)), in - 1)`.
pub fn nearest_u32(gpu: &Gpu, input: &GpuBuffer, output: &GpuBuffer, shape: &Resize) -> Result<()> {
    shape.validate("nearest resize")?;
    shape.check("the input", input, shape.in_len(), &shape.in_desc())?;
    shape.check("the output", output, shape.out_len(), &shape.out_desc())?;
    let n = shape.out_len();
    let label = KernelLabel { kernel: "nearest_u32", shape: shape.desc(), flops: 0, bytes: 8 * n as u64 };
    launch(gpu, "nearest_u32", 256, &shape.params(n), &[input, output, input, output], None, label)
}
