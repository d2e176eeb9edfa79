//! Differentiable ops over the model's own kernels: fused attention, the EM Aggregation loop,
//! patch embedding, bilinear resize, the cosine mask head and the two losses.

use std::sync::Arc;

use crate::autograd::{record, Op};
use crate::kernels::attention::{self, Attention, AttentionIo};
use crate::kernels::em::{Em, EmShape, GradMode};
use crate::kernels::upsample::{self, Resize};
use crate::kernels::{loss, mask_head, patch_embed, GpuBuffer};
use crate::kernels::{Error, Result};
use crate::tensor::Tensor;

/// What the EM Aggregation op returns.
pub struct EmOutput {
    /// R = Z_T mu_T [B,N,C]; differentiable in `Unrolled` mode, a constant in `Detached` mode.
    pub recon: Tensor,
    /// Z_T [B,N,M] (no gradient).
    pub z: Tensor,
    /// mu_T [B,M,C] (no gradient; feeds the bases moving average).
    pub mu: Tensor,
}

fn expect_shape(what: &str, t: &Tensor, rank: usize) -> Result<()> {
    if t.shape().len() != rank {
        return Err(Error::Shape(format!("{what} must have {rank} axes, not shape {:?}", t.shape())));
    }
    Ok(())
}

impl Tensor {
    /// Multi-head attention of queries `self` [B,Nq,H*dh] over keys/values [Bk,Nk,H*dh]
    /// (Bk = B, or 1 for keys shared by the batch), with an optional u32 key mask [Bk,Nk]
    /// (1 = attend).
    pub fn attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        causal: bool,
        key_mask: Option<Arc<GpuBuffer>>,
    ) -> Result<Tensor> {
        for (name, t) in [("queries", self), ("keys", k), ("values", v)] {
            expect_shape(name, t, 3)?;
        }
        let (b, nq, width) = (self.shape()[0], self.shape()[1], self.shape()[2]);
        let (bk, nk) = (k.shape()[0], k.shape()[1]);
        if k.shape() != v.shape() || k.shape()[2] != width || (bk != b && bk != 1) || heads == 0 || width % heads != 0 {
            return Err(Error::Shape(format!(
                "attention over {heads} heads cannot take queries {:?}, keys {:?} and values {:?}",
                self.shape(),
                k.shape(),
                v.shape()
            )));
        }
        let mut spec = Attention::new(b, nq, nk, heads, width / heads).with_causal(causal);
        spec.kv_batch = bk;
        let gpu = self.gpu();
        let out = Arc::new(gpu.alloc(spec.q_elements())?);
        let lse = Arc::new(gpu.alloc(spec.lse_elements())?);
        let io = AttentionIo {
            q: self.buffer(),
            k: k.buffer(),
            v: v.buffer(),
            key_mask: key_mask.as_deref(),
            out: &out,
            lse: &lse,
            probs: None,
        };
        // The products method's probabilities, kept for the backward (when one is recorded).
        let probs = attention::forward(gpu, &io, &spec)?.map(Arc::new);
        let saved_out = out.clone();
        Ok(crate::autograd::record_arc(
            out,
            self.shape().to_vec(),
            || Op::Attention {
                q: self.clone(),
                k: k.clone(),
                v: v.clone(),
                out: saved_out,
                lse,
                probs,
                mask: key_mask,
                spec,
            },
            &[self, k, v],
        ))
    }

    /// The EM Aggregation loop on `self` = u [B,N,C] from bases [M,C] (docs/DESIGN.md step 8).
    pub fn em_aggregate(&self, bases: &Tensor, iters: usize, lambda: f32, mode: GradMode) -> Result<EmOutput> {
        expect_shape("the EM input", self, 3)?;
        expect_shape("the EM bases", bases, 2)?;
        let (b, n, c) = (self.shape()[0], self.shape()[1], self.shape()[2]);
        let m = bases.shape()[0];
        if bases.shape()[1] != c {
            return Err(Error::Shape(format!("EM bases {:?} do not match features {:?}", bases.shape(), self.shape())));
        }
        let spec = EmShape { batch: b, tokens: n, width: c, bases: m, iters, lambda };
        let gpu = self.gpu();
        let grad = mode == GradMode::Unrolled && crate::autograd::is_recording() && self.requires_grad();
        let fwd = Em::new(gpu, spec)?.forward(self.buffer(), bases.buffer(), grad)?;
        // Copies of the outputs become tensors; the forward record itself is kept whole for
        // the backward (a queue-ordered buffer copy, no dispatch).
        let copy = |b: &GpuBuffer, shape: &[usize]| -> Result<Tensor> {
            let out = gpu.alloc(b.len())?;
            gpu.copy(b, &out)?;
            Tensor::from_buffer(gpu, out, shape)
        };
        let z = copy(&fwd.z, &[b, n, m])?;
        let mu = copy(&fwd.mu, &[b, m, c])?;
        let recon = if grad {
            let out = gpu.alloc(fwd.recon.len())?;
            gpu.copy(&fwd.recon, &out)?;
            let fwd = Arc::new(fwd);
            record(out, vec![b, n, c], || Op::Em { u: self.clone(), bases: bases.detach(), fwd, spec }, &[self])
        } else {
            // Detached (EMANet): Z and mu are constants, so R is too.
            copy(&fwd.recon, &[b, n, c])?
        };
        Ok(EmOutput { recon, z, mu })
    }

    /// Patch embedding of images `self` [B,3,S,S] by `weight` [D,3,p,p] into tokens [B,N,D].
    pub fn patch_embed(&self, weight: &Tensor) -> Result<Tensor> {
        expect_shape("the image batch", self, 4)?;
        expect_shape("the patch embedding weight", weight, 4)?;
        let (b, ch, size) = (self.shape()[0], self.shape()[1], self.shape()[2]);
        let (dim, wch, p) = (weight.shape()[0], weight.shape()[1], weight.shape()[2]);
        if self.shape()[3] != size || wch != ch || weight.shape()[3] != p || p == 0 || size % p != 0 {
            return Err(Error::Shape(format!(
                "patch embedding weight {:?} cannot embed images {:?}",
                weight.shape(),
                self.shape()
            )));
        }
        let n = (size / p) * (size / p);
        let out = self.gpu().alloc(b * n * dim)?;
        let shape = patch_embed::PatchEmbed { batch: b, channels: ch, size, patch: p, dim };
        let inputs = patch_embed::PatchEmbedInputs { image: self.buffer(), weight: weight.buffer() };
        patch_embed::forward(self.gpu(), &inputs, &out, &shape)?;
        Ok(record(
            out,
            vec![b, n, dim],
            || Op::PatchEmbed {
                image: self.clone(),
                weight: weight.clone(),
                batch: b,
                channels: ch,
                size,
                patch: p,
                dim,
            },
            &[self, weight],
        ))
    }

    /// Bilinear resize (align_corners = false) of `self` [B,K,h,w] to [B,K,H,W].
    pub fn resize_bilinear(&self, out_h: usize, out_w: usize) -> Result<Tensor> {
        expect_shape("the resized tensor", self, 4)?;
        let s = self.shape();
        let spec = Resize { batch: s[0], channels: s[1], in_h: s[2], in_w: s[3], out_h, out_w };
        let out = self.gpu().alloc(s[0] * s[1] * out_h * out_w)?;
        upsample::bilinear(self.gpu(), self.buffer(), &out, &spec)?;
        Ok(record(out, vec![s[0], s[1], out_h, out_w], || Op::Bilinear { spec }, &[self]))
    }

    /// Pixel shuffle of tokens: `self` [B, g*g, r*r*C], the row-major g x g grid with each
    /// token's r x r sub-tokens of C channels in row-major order, to [B, (g*r)^2, C], the
    /// row-major (g*r) x (g*r) grid: sub-token (i, j) of token (y, x) lands at (y*r + i,
    /// x*r + j). A reshape, a permutation of axes and a reshape, so it is differentiable.
    pub fn pixel_shuffle(&self, g: usize, r: usize) -> Result<Tensor> {
        expect_shape("the tokens to shuffle", self, 3)?;
        let (b, n, rrc) = (self.shape()[0], self.shape()[1], self.shape()[2]);
        if r == 0 || n != g * g || !rrc.is_multiple_of(r * r) {
            return Err(Error::Shape(format!(
                "pixel shuffle of {r} x {r} sub-tokens needs [B, {g}*{g}, {r}*{r}*C], not {:?}",
                self.shape()
            )));
        }
        let c = rrc / (r * r);
        self.reshape(&[b, g, g, r, r, c])?.permute(&[0, 1, 3, 2, 4, 5])?.reshape(&[b, g * r * g * r, c])
    }

    /// Cosine mask head: `s * cos(x[b,n], text[k])` with s = min(exp(logit_scale), 100);
    /// `self` = x [B,N,C], text [K,C], logit_scale [1]; output [B,K,N].
    pub fn mask_head(&self, text: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
        expect_shape("the pixel features", self, 3)?;
        let (b, n, c) = (self.shape()[0], self.shape()[1], self.shape()[2]);
        if text.shape().len() != 2 || text.shape()[1] != c || logit_scale.numel() != 1 {
            return Err(Error::Shape(format!(
                "the mask head cannot compare pixel features {:?} with text {:?} (logit scale {:?})",
                self.shape(),
                text.shape(),
                logit_scale.shape()
            )));
        }
        let k = text.shape()[0];
        let out = self.gpu().alloc(b * k * n)?;
        let inputs =
            mask_head::MaskHeadInputs { x: self.buffer(), text: text.buffer(), logit_scale: logit_scale.buffer() };
        let shape = mask_head::MaskHead { batch: b, tokens: n, width: c, classes: k };
        mask_head::forward(self.gpu(), &inputs, &out, &shape)?;
        Ok(record(
            out,
            vec![b, k, n],
            || Op::MaskHead {
                x: self.clone(),
                text: text.clone(),
                scale: logit_scale.clone(),
                batch: b,
                tokens: n,
                width: c,
                classes: k,
            },
            &[self, text, logit_scale],
        ))
    }

    /// Mean pixel cross-entropy of logits `self` [B,K,...] against u32 class indices
    /// `target` [B,...]; shape [1].
    pub fn cross_entropy(&self, target: &Arc<GpuBuffer>) -> Result<Tensor> {
        let (b, k, p) = loss_dims(self, target)?;
        let out = self.gpu().alloc(1)?;
        let shape = loss::LossShape { batch: b, classes: k, pixels: p };
        loss::cross_entropy(self.gpu(), self.buffer(), target, &out, &shape)?;
        Ok(record(
            out,
            vec![1],
            || Op::CrossEntropy { logits: self.clone(), target: target.clone(), batch: b, classes: k, pixels: p },
            &[self],
        ))
    }

    /// Dice loss on softmax probabilities over foreground classes (docs/DESIGN.md step 11); shape [1].
    pub fn dice_loss(&self, target: &Arc<GpuBuffer>) -> Result<Tensor> {
        let (b, k, p) = loss_dims(self, target)?;
        let out = self.gpu().alloc(1)?;
        let stats = Arc::new(self.gpu().alloc(loss::dice_stats_len(k).max(1))?);
        let shape = loss::LossShape { batch: b, classes: k, pixels: p };
        loss::dice(self.gpu(), self.buffer(), target, &stats, &out, &shape)?;
        Ok(record(
            out,
            vec![1],
            || Op::Dice { logits: self.clone(), target: target.clone(), stats, batch: b, classes: k, pixels: p },
            &[self],
        ))
    }
}

fn loss_dims(logits: &Tensor, target: &GpuBuffer) -> Result<(usize, usize, usize)> {
    let s = logits.shape();
    if s.len() < 2 {
        return Err(Error::Shape(format!("logits must be [B,K,...], not {s:?}")));
    }
    let (b, k) = (s[0], s[1]);
    let p = logits.numel() / (b * k).max(1);
    if target.len() < b * p {
        return Err(Error::Shape(format!(
            "a target of {} pixels does not cover logits {s:?} ({} pixels)",
            target.len(),
            b * p
        )));
    }
    Ok((b, k, p))
}
