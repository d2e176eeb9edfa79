//! Inference on images: segmentation masks at the original size (docs/DESIGN.md step 12), tinted
//! overlays with a legend, and the `forward --dump` / `grad --dump` tensor files.

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::{AutoZoomOut, AUTO_ZOOM_OUT_MAX};
use crate::error::{Error, Result};
use crate::font;
use crate::image_io::{argmax_resized, field_of_view, preprocess, whole_field, Image, Mask, Rect};
use crate::kernels::loss;
use crate::model::Model;
use crate::tensor::Tensor;
use crate::weights::{HostTensor, TensorFile, CONFIG_KEY};

/// Images per forward pass when segmenting many images.
pub const SEGMENT_BATCH: usize = 8;

impl Model {
    /// The normalized model input [B,3,S,S] for `images` (docs/DESIGN.md step 1).
    pub fn input(&self, images: &[&Image]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::Invalid("no images were given".into()));
        }
        let c = &self.config;
        let data = preprocess(images, c.image_size, c.pixel_mean, c.pixel_std);
        Ok(Tensor::from_vec(self.gpu(), &data, &[images.len(), 3, c.image_size, c.image_size])?)
    }

    /// Class index per pixel of the model's upsampled logits [B,K,S,S]: B masks of S x S.
    pub fn predict(&self, logits_up: &Tensor) -> Result<Vec<Vec<u32>>> {
        let s = logits_up.shape();
        let (b, k, pixels) = (s[0], s[1], s[2] * s[3]);
        let gpu = self.gpu();
        let labels = gpu.alloc(b * pixels)?;
        loss::argmax(gpu, logits_up.buffer(), &labels, &loss::LossShape { batch: b, classes: k, pixels })?;
        let all: Vec<u32> = gpu.download_pod(&labels)?;
        Ok(all.chunks(pixels).map(|c| c.to_vec()).collect())
    }

    /// Segments images of any size: a mask per image at its own size (the S x S logits
    /// bilinearly resized to the image's size, then the argmax: [`argmax_resized`]), in batches
    /// of [`SEGMENT_BATCH`]. A model with `refine` segments
    /// each image twice ([`refine_window`]): the mask is then the second pass's prediction of a
    /// window around the first pass's foreground, background elsewhere.
    ///
    /// A model with `field_of_view` first crops each image to its field of view
    /// ([`field_of_view`]) and segments that; the mask is background outside it.
    pub fn segment(&self, images: &[&Image]) -> Result<Vec<Mask>> {
        Ok(self.segment_zoomed(images)?.into_iter().map(|(mask, _)| mask).collect())
    }

    /// [`Model::segment`], with the zoom-out each mask was predicted at: the model's
    /// `zoom_out` (1 when absent), or, with the automatic zoom-out enabled
    /// ([`crate::config::Config::auto_zoom`]), the one it chose for the image
    /// (docs/DESIGN.md step 15).
    pub fn segment_zoomed(&self, images: &[&Image]) -> Result<Vec<(Mask, usize)>> {
        if !self.config.field_of_view {
            return self.segment_view(images);
        }
        let boxes: Vec<Option<Rect>> = images.iter().map(|img| field_of_view(img)).collect();
        let views: Vec<Cow<Image>> = images
            .iter()
            .zip(&boxes)
            .map(|(&img, b)| match b {
                Some(r) => Cow::Owned(img.crop(r.x0, r.y0, r.width, r.height)),
                None => Cow::Borrowed(img),
            })
            .collect();
        let masks = self.segment_view(&views.iter().map(|v| v.as_ref()).collect::<Vec<_>>())?;
        Ok(masks
            .into_iter()
            .zip(images.iter().zip(&boxes))
            .map(|((m, zoom), (img, b))| match b {
                Some(r) => (m.placed(r.x0, r.y0, img.width, img.height), zoom),
                None => (m, zoom),
            })
            .collect())
    }

    /// [`Model::segment_zoomed`] of images already cropped to their field of view (or without
    /// one): steps 1-13, one pass or two with `refine`, or the automatic zoom-out's search.
    fn segment_view(&self, images: &[&Image]) -> Result<Vec<(Mask, usize)>> {
        let c = &self.config;
        if let Some(auto) = c.auto_zoom() {
            return self.segment_auto_zoom_out(images, auto);
        }
        let zoom = c.zoom_out();
        let first = self.segment_once(images, zoom)?;
        let Some(refine) = &self.config.refine else {
            return Ok(first.into_iter().map(|m| (m, zoom)).collect());
        };
        let windows: Vec<Option<Window>> = first.iter().map(|m| refine_window(m, refine.crop)).collect();
        let crops: Vec<Image> = images
            .iter()
            .zip(&windows)
            .filter_map(|(img, w)| w.map(|w| img.crop(w.x0, w.y0, w.side, w.side)))
            .collect();
        let mut second = self.segment_once(&crops.iter().collect::<Vec<_>>(), zoom)?.into_iter();
        let mut masks = Vec::with_capacity(images.len());
        for (mask, window) in first.into_iter().zip(windows) {
            let Some(w) = window else {
                masks.push((mask, zoom)); // nothing found: all background already
                continue;
            };
            let part = second.next().expect("one second-pass mask per window");
            masks.push((part.placed(w.x0, w.y0, mask.width, mask.height), zoom));
        }
        Ok(masks)
    }

    /// The automatic zoom-out: whole fields at zoom-out 1; every other view at each zoom-out
    /// 1..=[`AUTO_ZOOM_OUT_MAX`], keeping the lowest [`auto_zoom_out_score`] (the smaller
    /// zoom-out on a tie; 1 where no zoom-out finds the object).
    fn segment_auto_zoom_out(&self, images: &[&Image], auto: &AutoZoomOut) -> Result<Vec<(Mask, usize)>> {
        let (fields, close): (Vec<usize>, Vec<usize>) = (0..images.len()).partition(|&i| whole_field(images[i]));
        let mut out: Vec<Option<(Mask, usize)>> = vec![None; images.len()];
        let pick = |list: &[usize]| list.iter().map(|&i| images[i]).collect::<Vec<_>>();
        for (&i, mask) in fields.iter().zip(self.segment_once(&pick(&fields), 1)?) {
            out[i] = Some((mask, 1));
        }
        let mut best: Vec<Option<(f64, Mask, usize)>> = vec![None; close.len()];
        let mut unzoomed = Vec::new();
        for zoom in 1..=AUTO_ZOOM_OUT_MAX {
            let masks = self.segment_once(&pick(&close), zoom)?;
            for (slot, mask) in best.iter_mut().zip(&masks) {
                let Some(score) = auto_zoom_out_score(mask, zoom, auto) else { continue };
                if slot.as_ref().is_none_or(|(s, ..)| score < *s) {
                    *slot = Some((score, mask.clone(), zoom));
                }
            }
            if zoom == 1 {
                unzoomed = masks;
            }
        }
        for ((&i, found), plain) in close.iter().zip(best).zip(unzoomed) {
            out[i] = Some(found.map_or((plain, 1), |(_, mask, zoom)| (mask, zoom)));
        }
        Ok(out.into_iter().map(|m| m.expect("every image is a whole field or a close-up")).collect())
    }

    /// Builds the pipelines of an inference forward on `input` several at once, before it
    /// runs ([`Gpu::prepare_pipelines`](crate::Gpu::prepare_pipelines)): once per batch size, a
    /// rehearsal of the forward that records nothing, then the pipelines it needs, built in
    /// parallel. On lavapipe that is most of what segmenting one image takes (README, "Where
    /// vlsa stands on lavapipe").
    pub fn prepare_forward(&self, input: &Tensor) -> Result<()> {
        let batch = input.shape()[0];
        let mut prepared = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        if prepared.contains(&batch) {
            return Ok(());
        }
        self.gpu().prepare_pipelines(|| crate::no_grad(|| self.forward(input)))?;
        prepared.push(batch);
        Ok(())
    }

    /// One pass of [`Model::segment`]: each image's logits (of its place in the input where
    /// `zoom` > 1 shrinks it there: [`zoom_out_canvas`]) resized to its size, then the argmax.
    fn segment_once(&self, images: &[&Image], zoom: usize) -> Result<Vec<Mask>> {
        let c = &self.config;
        let (s, k) = (c.image_size, c.num_classes());
        let mut masks = Vec::with_capacity(images.len());
        for chunk in images.chunks(SEGMENT_BATCH) {
            let canvases: Vec<(Image, Rect)> =
                if zoom > 1 { chunk.iter().map(|img| zoom_out_canvas(img, zoom, s)).collect() } else { Vec::new() };
            let inputs: Vec<&Image> = if zoom > 1 { canvases.iter().map(|(c, _)| c).collect() } else { chunk.to_vec() };
            let base = preprocess(&inputs, s, c.pixel_mean, c.pixel_std);
            let input = Tensor::from_vec(self.gpu(), &base, &[chunk.len(), 3, s, s])?;
            self.prepare_forward(&input)?;
            let logits = if c.shifts() > 1 {
                self.logits_shifted_batch(&base, chunk.len(), Some(&input))?
            } else {
                crate::no_grad(|| self.forward(&input))?.logits_up.to_vec()?
            };
            for (i, (img, logits)) in chunk.iter().zip(logits.chunks(k * s * s)).enumerate() {
                let labels = match canvases.get(i) {
                    None => argmax_resized(logits, k, s, s, img.width, img.height),
                    Some((_, p)) => {
                        let window: Vec<f32> = logits
                            .chunks(s * s)
                            .flat_map(|plane| {
                                (p.y0..p.y0 + p.height).flat_map(move |y| &plane[y * s + p.x0..][..p.width])
                            })
                            .copied()
                            .collect();
                        argmax_resized(&window, k, p.width, p.height, img.width, img.height)
                    }
                };
                masks.push(Mask { width: img.width, height: img.height, labels });
            }
        }
        Ok(masks)
    }

    /// The shift ensemble's logits (docs/DESIGN.md, "Shift ensemble"), [B,K,S,S]: with
    /// k = `config.shifts`, the preprocessed input is moved by (i, j) * patch_size / k pixels
    /// down and right for i, j in 0..k (the first row and column repeated into the gap), each
    /// copy goes through the forward, its upsampled logits are moved back, and every pixel
    /// takes the mean of the logits that cover it (the unmoved copy covers all). The k x k
    /// placements of the token grid together resolve boundaries k times finer than one grid
    /// of patch_size pixels. Images go through the forward [`SEGMENT_BATCH`] at a time.
    pub fn logits_shifted(&self, images: &[&Image]) -> Result<Vec<f32>> {
        if images.is_empty() {
            return Err(Error::Invalid("no images were given".into()));
        }
        let mut all = Vec::new();
        let c = &self.config;
        for chunk in images.chunks(SEGMENT_BATCH) {
            let base = preprocess(chunk, c.image_size, c.pixel_mean, c.pixel_std);
            all.extend(self.logits_shifted_batch(&base, chunk.len(), None)?);
        }
        Ok(all)
    }

    /// [`Model::logits_shifted`] of one batch of `b` preprocessed images `base` [b,3,S,S];
    /// `unmoved`, where the caller has uploaded `base` already, serves as the unmoved copy.
    fn logits_shifted_batch(&self, base: &[f32], b: usize, unmoved: Option<&Tensor>) -> Result<Vec<f32>> {
        let c = &self.config;
        let (s, shifts) = (c.image_size, c.shifts());
        let step = c.patch_size / shifts;
        let plane = s * s;
        let mut sum = vec![0f64; b * c.num_classes() * plane];
        let mut covered = vec![0u32; plane];
        let mut moved = vec![0f32; base.len()];
        for (dy, dx) in (0..shifts).flat_map(|i| (0..shifts).map(move |j| (i * step, j * step))) {
            let uploaded;
            let input = match unmoved {
                Some(input) if (dy, dx) == (0, 0) => input,
                _ => {
                    // moved[y][x] = base[y - dy][x - dx], clamped at the first row and column.
                    for (to, from) in moved.chunks_mut(plane).zip(base.chunks(plane)) {
                        for y in 0..s {
                            let src = &from[y.saturating_sub(dy) * s..][..s];
                            let row = &mut to[y * s..][..s];
                            row[..dx].fill(src[0]);
                            row[dx..].copy_from_slice(&src[..s - dx]);
                        }
                    }
                    uploaded = Tensor::from_vec(self.gpu(), &moved, &[b, 3, s, s])?;
                    &uploaded
                }
            };
            let logits = crate::no_grad(|| self.forward(input))?.logits_up.to_vec()?;
            // Output pixel (y + dy, x + dx) of the moved copy is pixel (y, x) of the image.
            for y in 0..s - dy {
                covered[y * s..][..s - dx].iter_mut().for_each(|n| *n += 1);
            }
            for (acc, l) in sum.chunks_mut(plane).zip(logits.chunks(plane)) {
                for y in 0..s - dy {
                    let from = &l[(y + dy) * s + dx..][..s - dx];
                    for (a, v) in acc[y * s..][..s - dx].iter_mut().zip(from) {
                        *a += *v as f64;
                    }
                }
            }
        }
        Ok(sum.chunks(plane).flat_map(|p| p.iter().zip(&covered).map(|(v, &n)| (v / n as f64) as f32)).collect())
    }

    /// Class index per pixel at S x S of each image by the shift ensemble: the argmax over
    /// classes (the first on ties, as [`Model::predict`]) of [`Model::logits_shifted`].
    pub fn predict_shifted(&self, images: &[&Image]) -> Result<Vec<Vec<u32>>> {
        self.predict_logits(&self.logits_shifted(images)?, images.len())
    }

    /// [`Model::predict`] of `b` images' logits [b,K,S,S] held on the host.
    fn predict_logits(&self, logits: &[f32], b: usize) -> Result<Vec<Vec<u32>>> {
        let c = &self.config;
        let shape = [b, c.num_classes(), c.image_size, c.image_size];
        self.predict(&Tensor::from_vec(self.gpu(), logits, &shape)?)
    }

    /// The `forward --dump` tensors for `images`: `input` and every docs/DESIGN.md intermediate.
    pub fn forward_dump(&self, images: &[&Image]) -> Result<TensorFile> {
        let input = self.input(images)?;
        let out = crate::no_grad(|| self.forward(&input))?;
        let mut file = self.dump_file();
        file.tensors.insert("input".into(), host(&input)?);
        for (name, t) in out.named() {
            file.tensors.insert(name.into(), host(t)?);
        }
        Ok(file)
    }

    /// The `grad --dump` tensors for images and their masks: `input`, `target` (class indices
    /// nearest-resized to S x S, stored as f32), `loss` and `grad.<name>` of every trainable
    /// parameter (zeros where no gradient flows). Gradients are left on the parameters.
    pub fn grad_dump(&self, images: &[&Image], masks: &[&Mask]) -> Result<TensorFile> {
        let (s, k) = (self.config.image_size, self.config.num_classes());
        if images.len() != masks.len() {
            return Err(Error::Invalid(format!(
                "{} images but {} masks were given; each image needs its mask",
                images.len(),
                masks.len()
            )));
        }
        let mut target = Vec::with_capacity(masks.len() * s * s);
        for (i, (img, mask)) in images.iter().zip(masks).enumerate() {
            if (img.width, img.height) != (mask.width, mask.height) {
                return Err(Error::Invalid(format!(
                    "mask {} is {}x{} but its image is {}x{}",
                    i + 1,
                    mask.width,
                    mask.height,
                    img.width,
                    img.height
                )));
            }
            if let Some(&bad) = mask.labels.iter().find(|&&l| l as usize >= k) {
                return Err(Error::Invalid(format!("mask {} holds class {bad}, but the model has {k} classes", i + 1)));
            }
            target.extend(mask.resize_nearest(s, s).labels.into_iter().map(u32::from));
        }
        let input = self.input(images)?;
        for (_, p) in self.parameters() {
            p.zero_grad();
        }
        let out = self.forward(&input)?;
        let gpu_target = Arc::new(self.gpu().upload(&target)?);
        let loss = self.loss(&out.logits_up, &gpu_target)?;
        crate::backward(&loss)?;
        let mut file = self.dump_file();
        file.tensors.insert("input".into(), host(&input)?);
        file.tensors.insert(
            "target".into(),
            HostTensor::new(&[images.len(), s, s], target.iter().map(|&t| t as f32).collect()),
        );
        file.tensors.insert("loss".into(), host(&loss)?);
        for (name, p) in self.parameters() {
            let data = match p.grad() {
                Some(g) => g.to_vec()?,
                None => vec![0.0; p.numel()],
            };
            file.tensors.insert(format!("grad.{name}"), HostTensor::new(p.shape(), data));
        }
        Ok(file)
    }

    fn dump_file(&self) -> TensorFile {
        let mut file = TensorFile::default();
        file.metadata.insert(CONFIG_KEY.into(), self.config.to_json());
        file
    }
}

/// The S x S model input of `image` zoomed out by `zoom`: the image resized (bilinear, its
/// aspect kept) so that its longer side is S / `zoom` (at least 1 pixel), in the middle of a
/// black canvas; and its place there.
pub fn zoom_out_canvas(image: &Image, zoom: usize, s: usize) -> (Image, Rect) {
    let long = image.width.max(image.height) as f64;
    let side = |n: usize| ((n as f64 * s as f64 / (zoom as f64 * long)).round() as usize).clamp(1, s);
    let (width, height) = (side(image.width), side(image.height));
    let (x0, y0) = ((s - width) / 2, (s - height) / 2);
    let small = image.resize(width, height);
    let mut rgb = vec![0.0f32; s * s * 3];
    for (y, row) in small.rgb.chunks(width * 3).enumerate() {
        rgb[((y0 + y) * s + x0) * 3..][..width * 3].copy_from_slice(row);
    }
    (Image { width: s, height: s, rgb }, Rect { x0, y0, width, height })
}

/// How far `mask`, predicted at zoom-out `zoom`, is from the automatic zoom-out's reference:
/// |ln(extent / auto.extent)|, where the extent is sqrt(pixels of `auto.classes`) / (zoom x
/// the mask's longer side), the side of a square of the object's area as a fraction of the
/// model input it was predicted in. `None` where the mask has none of those classes.
pub fn auto_zoom_out_score(mask: &Mask, zoom: usize, auto: &AutoZoomOut) -> Option<f64> {
    let area = mask.labels.iter().filter(|&&v| auto.classes.contains(&u32::from(v))).count();
    if area == 0 {
        return None;
    }
    let extent = (area as f64).sqrt() / (zoom * mask.width.max(mask.height)) as f64;
    Some((extent / f64::from(auto.extent)).ln().abs())
}

/// A square window of a mask: its top-left corner and side, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x0: usize,
    pub y0: usize,
    pub side: usize,
}

/// The window of the second pass of refinement: side `crop` times the mask's shorter side,
/// placed where it holds the most foreground pixels (labels other than 0), then centred on the
/// bounding box of the foreground it holds (moved inside the mask where that would leave it).
/// So stray foreground elsewhere neither moves nor widens it. `None` without foreground.
pub fn refine_window(mask: &Mask, crop: f32) -> Option<Window> {
    let (w, h) = (mask.width, mask.height);
    let side = ((crop * w.min(h) as f32).round() as usize).clamp(1, w.min(h));
    // Integral image of the foreground: sum[y][x] counts the pixels above and left of (x, y).
    let mut sum = vec![0u32; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0;
        for x in 0..w {
            row += u32::from(mask.labels[y * w + x] != 0);
            sum[(y + 1) * (w + 1) + x + 1] = sum[y * (w + 1) + x + 1] + row;
        }
    }
    let count = |x0: usize, y0: usize| {
        let (x1, y1) = (x0 + side, y0 + side);
        sum[y1 * (w + 1) + x1] + sum[y0 * (w + 1) + x0] - sum[y0 * (w + 1) + x1] - sum[y1 * (w + 1) + x0]
    };
    let mut best = (0, 0, 0);
    for y0 in 0..=h - side {
        for x0 in 0..=w - side {
            let c = count(x0, y0);
            if c > best.0 {
                best = (c, x0, y0);
            }
        }
    }
    let (_, bx, by) = best;
    // None when the best window, hence the whole mask, holds no foreground.
    let [x_lo, x_hi, y_lo, y_hi] = mask.foreground_box(bx, by, side, side)?;
    let place = |lo: usize, hi: usize, len: usize| ((lo + hi + 1).saturating_sub(side) / 2).min(len - side);
    Some(Window { x0: place(x_lo, x_hi, w), y0: place(y_lo, y_hi, h), side })
}

/// Replaces the model's class embeddings by the embeddings of `prompts` (one per class,
/// background first) made by the text encoder in `dir` (a Hugging Face BERT folder).
pub fn embed_prompts(model: &mut Model, dir: &std::path::Path, prompts: &[String]) -> Result<()> {
    let encoder = crate::text::TextEncoder::load(model.gpu(), dir)?;
    let text_dim = model.config.text_dim;
    if encoder.dim() != text_dim {
        return Err(Error::Invalid(format!(
            "the text encoder {} embeds into {} dimensions but the model's text_dim is {text_dim}; use a configuration with text_dim {}",
            dir.display(),
            encoder.dim(),
            encoder.dim()
        )));
    }
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let embeddings = encoder.embed(&texts)?;
    model.set_class_embeddings(&HostTensor::new(&[texts.len(), text_dim], embeddings))
}

fn host(t: &Tensor) -> Result<HostTensor> {
    Ok(HostTensor::new(t.shape(), t.to_vec()?))
}

/// Colour of class `k` in overlays and legends (class 0, the background, is not drawn). Bright,
/// saturated colours first (cyan, yellow, magenta, green, orange), which stand out on grey MRI and
/// on red-orange fundus photographs alike; the contours get a black edge besides.
pub fn class_color(k: usize) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 10] = [
        [0, 0, 0],
        [0, 229, 255],
        [255, 235, 0],
        [255, 64, 255],
        [64, 255, 64],
        [255, 140, 0],
        [90, 140, 255],
        [255, 255, 255],
        [255, 120, 160],
        [160, 255, 220],
    ];
    if k < PALETTE.len() {
        PALETTE[k]
    } else {
        // Further classes: a deterministic hue walk.
        let h = (k as f32 * 0.618_034).fract() * 6.0;
        let x = (1.0 - (h % 2.0 - 1.0).abs()) * 255.0;
        let (r, g, b) = match h as u32 {
            0 => (255.0, x, 0.0),
            1 => (x, 255.0, 0.0),
            2 => (0.0, 255.0, x),
            3 => (0.0, x, 255.0),
            4 => (x, 0.0, 255.0),
            _ => (255.0, 0.0, x),
        };
        [r as u8, g as u8, b as u8]
    }
}

/// Overlays narrower than this many pixels are enlarged by a whole factor (nearest neighbour)
/// so that the contours and the legend's class names are legible.
pub const OVERLAY_MIN_WIDTH: usize = 320;

/// Share of the class colour in the light fill of a class's pixels.
const FILL: f32 = 0.25;

/// The image with every foreground class drawn as a contour (class colour with a black outer
/// edge, so it stands out on any image) around a light fill (25 % class colour), and a legend
/// below naming each class. An image narrower than [`OVERLAY_MIN_WIDTH`] is enlarged by
/// `ceil(OVERLAY_MIN_WIDTH / width)` first; the result is RGB8, `zoom * width` wide, `zoom *
/// height` tall plus the legend rows.
pub fn overlay(image: &Image, mask: &Mask, classes: &[String]) -> Result<Image> {
    if (image.width, image.height) != (mask.width, mask.height) {
        return Err(Error::Invalid(format!(
            "the mask is {}x{} but the image is {}x{}",
            mask.width, mask.height, image.width, image.height
        )));
    }
    let zoom = OVERLAY_MIN_WIDTH.div_ceil(image.width.max(1)).max(1);
    let (w, h) = (image.width * zoom, image.height * zoom);
    let base = image.to_rgb8();
    let label = |x: usize, y: usize| mask.labels[(y / zoom) * image.width + x / zoom] as usize;
    // Font scale: 2 at the minimum width, up to 4 on large images.
    let scale = (w / 160).clamp(1, 4);
    let line = (font::GLYPH_H + 4) * scale;
    let side = font::GLYPH_H * scale;
    // Lay the legend out in rows of (swatch, name) entries that fit the width.
    let mut entries: Vec<(usize, usize, usize)> = Vec::new(); // (class, x, row)
    let (mut x, mut row) = (2 * scale, 0);
    for (k, name) in classes.iter().enumerate().skip(1) {
        let entry = side + 2 * scale + font::text_width(name, scale) + 4 * scale;
        if x + entry > w && x > 2 * scale {
            x = 2 * scale;
            row += 1;
        }
        entries.push((k, x, row));
        x += entry;
    }
    let legend_h = if entries.is_empty() { 0 } else { (row + 1) * line + 2 * scale };
    // The contour is `thick` pixels of class colour inside the class's edge plus one black pixel
    // at the edge itself, measured at the output resolution.
    let thick = scale.max(zoom.min(3));
    let mut out = vec![24u8; w * (h + legend_h) * 3];
    for y in 0..h {
        for x in 0..w {
            let k = label(x, y);
            let i = (y / zoom) * image.width + x / zoom;
            let px = &base[i * 3..i * 3 + 3];
            let o = &mut out[(y * w + x) * 3..][..3];
            if k == 0 {
                o.copy_from_slice(px);
                continue;
            }
            // Distance (in pixels, 4 directions) to the nearest pixel of another class, up to
            // thick + 1; the image border counts as an edge.
            let mut edge = usize::MAX;
            for d in 1..=thick + 1 {
                let differs = |xx: Option<usize>, yy: Option<usize>| match (xx, yy) {
                    (Some(xx), Some(yy)) if xx < w && yy < h => label(xx, yy) != k,
                    _ => true,
                };
                if differs(x.checked_sub(d), Some(y))
                    || differs(Some(x + d), Some(y))
                    || differs(Some(x), y.checked_sub(d))
                    || differs(Some(x), Some(y + d))
                {
                    edge = d;
                    break;
                }
            }
            let c = class_color(k);
            if edge == 1 {
                o.copy_from_slice(&[0, 0, 0]);
            } else if edge <= thick + 1 {
                o.copy_from_slice(&c);
            } else {
                for ch in 0..3 {
                    o[ch] = ((1.0 - FILL) * px[ch] as f32 + FILL * c[ch] as f32).round() as u8;
                }
            }
        }
    }
    for (k, x, row) in entries {
        let y = h + 2 * scale + row * line;
        for dy in 0..side {
            for dx in 0..side {
                if x + dx < w {
                    let edge = dx == 0 || dy == 0 || dx + 1 == side || dy + 1 == side;
                    let c = if edge { [0, 0, 0] } else { class_color(k) };
                    out[((y + dy) * w + x + dx) * 3..][..3].copy_from_slice(&c);
                }
            }
        }
        font::draw_text(&mut out, w, x + side + 2 * scale, y, &classes[k], scale, [235, 235, 235]);
    }
    Image::from_rgb8(w, h + legend_h, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auto_zoom_out_score_is_the_log_distance_of_the_objects_extent() {
        // 20 x 10: nine pixels of class 1 and one of class 2 (the object), seven of class 3.
        let mut labels = vec![0u8; 200];
        labels[..9].fill(1);
        labels[9] = 2;
        labels[50..57].fill(3);
        let mask = Mask { width: 20, height: 10, labels };
        let auto = |extent: f32| AutoZoomOut { classes: vec![1, 2], extent, enabled: true };
        // sqrt(10) / (2 * 20): the longer side, times the zoom-out.
        let extent = 10f64.sqrt() / 40.0;
        let at = |reference: f64| auto_zoom_out_score(&mask, 2, &auto(reference as f32)).unwrap();
        assert!(at(extent).abs() < 1e-6);
        assert!((at(extent * 2.0) - 2f64.ln()).abs() < 1e-6 && (at(extent / 2.0) - 2f64.ln()).abs() < 1e-6);
        assert!((auto_zoom_out_score(&mask, 1, &auto(extent as f32)).unwrap() - 2f64.ln()).abs() < 1e-6);
        let none = AutoZoomOut { classes: vec![4], extent: 0.1, enabled: true };
        assert_eq!(auto_zoom_out_score(&mask, 1, &none), None, "no pixel of the object");
    }

    #[test]
    fn a_zoom_out_canvas_holds_the_image_shrunk_in_its_middle_and_black_around_it() {
        let image =
            Image { width: 30, height: 18, rgb: (0..30 * 18 * 3).map(|i| 0.2 + (i % 7) as f32 * 0.1).collect() };
        for (zoom, want) in
            [(1, Rect { x0: 0, y0: 3, width: 16, height: 10 }), (3, Rect { x0: 5, y0: 6, width: 5, height: 3 })]
        {
            let (canvas, place) = zoom_out_canvas(&image, zoom, 16);
            assert_eq!((canvas.width, canvas.height, place), (16, 16, want), "zoom {zoom}");
            let small = image.resize(place.width, place.height);
            for y in 0..16 {
                for x in 0..16 {
                    let px = &canvas.rgb[(y * 16 + x) * 3..][..3];
                    let inside = (place.x0..place.x0 + place.width).contains(&x)
                        && (place.y0..place.y0 + place.height).contains(&y);
                    if inside {
                        let at = ((y - place.y0) * place.width + x - place.x0) * 3;
                        assert_eq!(px, &small.rgb[at..at + 3], "({x}, {y})");
                    } else {
                        assert_eq!(px, &[0.0; 3], "({x}, {y})");
                    }
                }
            }
        }
        // However far out, the image keeps at least a pixel.
        assert_eq!(zoom_out_canvas(&image, 8, 4).1, Rect { x0: 1, y0: 1, width: 1, height: 1 });
    }

    #[test]
    fn refine_window_centres_on_the_largest_foreground_and_ignores_strays() {
        let (w, h) = (120, 80);
        let mut labels = vec![0u8; w * h];
        let mut paint = |x0: usize, y0: usize, x1: usize, y1: usize, l: u8| {
            for y in y0..y1 {
                labels[y * w + x0..y * w + x1].fill(l);
            }
        };
        paint(30, 20, 42, 30, 1); // the object: 12 x 10, centre (36, 25)
        paint(33, 23, 37, 27, 2);
        paint(110, 70, 112, 72, 1); // a stray 2 x 2 patch in a corner
        let mask = Mask { width: w, height: h, labels };
        let win = refine_window(&mask, 0.4).unwrap();
        assert_eq!(win.side, 32, "0.4 of the shorter side");
        assert_eq!((win.x0, win.y0), (36 - 16, 25 - 16), "centred on the object, not pulled by the stray");
        // Near the border the window stays inside the mask.
        let mut edge = vec![0u8; w * h];
        edge[w + 1] = 1;
        let win = refine_window(&Mask { width: w, height: h, labels: edge }, 0.5).unwrap();
        assert_eq!((win.x0, win.y0, win.side), (0, 0, 40));
        // A window of the whole shorter side cannot hold both; it holds the object, as far
        // towards centring it as the border allows. An empty mask has no window.
        let full = refine_window(&mask, 1.0).unwrap();
        assert_eq!((full.x0, full.y0, full.side), (0, 0, 80));
        assert_eq!(refine_window(&Mask { width: w, height: h, labels: vec![0; w * h] }, 0.4), None);
    }

    #[test]
    fn overlay_draws_contours_fills_and_a_legend_that_fits() {
        // A 40x8 grey image (enlarged 8 times to 320 wide) with a 4x4 square of class 1.
        let image = Image::from_rgb8(40, 8, &vec![100; 40 * 8 * 3]).unwrap();
        let mut labels = vec![0u8; 320];
        for y in 2..6 {
            labels[y * 40 + 10..y * 40 + 14].fill(1);
        }
        let mask = Mask { width: 40, height: 8, labels };
        let classes = vec!["background".to_string(), "disc".to_string(), "cup".to_string()];
        let out = overlay(&image, &mask, &classes).unwrap();
        let zoom = OVERLAY_MIN_WIDTH / 40;
        assert_eq!(out.width, 40 * zoom);
        let legend = out.height - 8 * zoom;
        assert!(legend > 0 && legend < 8 * zoom, "a legend strip below, shorter than the image: {legend}");
        let rgb = out.to_rgb8();
        let at = |x: usize, y: usize| &rgb[(y * out.width + x) * 3..][..3];
        assert_eq!(at(0, 0), &[100, 100, 100], "background pixels are unchanged");
        let (x0, y0) = (10 * zoom, 2 * zoom);
        assert_eq!(at(x0, y0 + 2 * zoom), &[0, 0, 0], "a black edge on the class's outline");
        assert_eq!(at(x0 + 1, y0 + 2 * zoom), &class_color(1), "then the class colour");
        let centre = at(12 * zoom, 4 * zoom);
        let c = class_color(1);
        for ch in 0..3 {
            let want = (0.75 * 100.0 + 0.25 * c[ch] as f32).round() as u8;
            assert_eq!(centre[ch], want, "a light fill inside");
        }
        // The legend's text is drawn (light pixels) and stays inside the picture.
        assert!(rgb[8 * zoom * out.width * 3..].chunks(3).any(|p| p == [235, 235, 235]));
        assert!(overlay(&image, &Mask { width: 1, height: 1, labels: vec![0] }, &classes).is_err());
        assert_ne!(class_color(12), class_color(13));
    }
}
