//! Images and masks on the host: decoding PNG/JPEG (grey, grey+alpha, RGB, RGBA; 8 or 16 bits),
//! the model's input preprocessing (docs/DESIGN.md step 1), nearest resizing of masks and PNG output.
//!
//! An [`Image`] is RGB in [0, 1], row-major, channels interleaved ([H, W, 3]). Grey images are
//! replicated to three channels; alpha is dropped (not composited). A [`Mask`] holds one class
//! index per pixel. Every problem is an [`Error::Format`] or [`Error::Io`] naming the file.

use std::path::Path;

use image::{DynamicImage, ImageFormat};

use crate::error::{Error, Result};

/// An RGB image with values in [0, 1], [H, W, 3] interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` values in [0, 1].
    pub rgb: Vec<f32>,
}

/// Images larger than this many pixels are refused before decoding (a 16k x 16k photo).
pub const MAX_PIXELS: u64 = 1 << 28;

fn format_error(source: &str, message: String) -> Error {
    Error::Format { path: source.to_string(), message }
}

fn decode_dynamic(bytes: &[u8], source: &str) -> Result<DynamicImage> {
    let format = image::guess_format(bytes)
        .map_err(|_| format_error(source, "is not a PNG or JPEG image (unrecognised file signature)".into()))?;
    if !matches!(format, ImageFormat::Png | ImageFormat::Jpeg) {
        return Err(format_error(source, format!("is a {format:?} image; vlsa reads PNG and JPEG")));
    }
    // The decoder's messages may span lines (zune-jpeg's I/O errors do): one line here.
    let cannot = |e: image::ImageError| {
        format_error(
            source,
            format!(
                "cannot be decoded as {format:?} ({})",
                e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        )
    };
    // The declared size is checked before any pixel is decoded, since the decoder allocates
    // the whole image up front: a few hundred bytes must not make it ask for gigabytes.
    let (w, h) =
        image::ImageReader::with_format(std::io::Cursor::new(bytes), format).into_dimensions().map_err(cannot)?;
    let (w, h) = (w as u64, h as u64);
    if w == 0 || h == 0 {
        return Err(format_error(source, "is an empty image (zero width or height)".into()));
    }
    if w * h > MAX_PIXELS {
        return Err(format_error(source, format!("is {w}x{h} pixels, more than vlsa's limit of {MAX_PIXELS}")));
    }
    let most = most_pixels(format, bytes.len() as u64);
    if w * h > most {
        return Err(format_error(
            source,
            format!(
                "declares {w}x{h} pixels, more than its {} bytes can hold (at most {most}); the file is corrupt",
                bytes.len()
            ),
        ));
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8);
    reader.limits(limits);
    reader.decode().map_err(cannot)
}

/// The most pixels a file of `len` bytes can encode. PNG: deflate expands at most 1032:1 and
/// a pixel takes at least one bit. JPEG (Huffman-coded, all the decoder reads): every 8x8 block
/// spends at least one bit on its DC coefficient. Plus a margin for tiny files.
fn most_pixels(format: ImageFormat, len: u64) -> u64 {
    let per_byte = if format == ImageFormat::Png { 8 * 1032 } else { 8 * 64 };
    len.saturating_mul(per_byte).saturating_add(1 << 16)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

impl Image {
    /// Reads and decodes an image file.
    pub fn load(path: &Path) -> Result<Image> {
        Image::decode(&read_file(path)?, &path.display().to_string())
    }

    /// Decodes PNG or JPEG bytes; `source` names them in errors.
    pub fn decode(bytes: &[u8], source: &str) -> Result<Image> {
        let img = decode_dynamic(bytes, source)?;
        let rgb = img.to_rgb32f();
        Ok(Image { width: rgb.width() as usize, height: rgb.height() as usize, rgb: rgb.into_raw() })
    }

    /// An image from 8-bit RGB bytes [H, W, 3].
    pub fn from_rgb8(width: usize, height: usize, bytes: &[u8]) -> Result<Image> {
        if width == 0 || height == 0 || bytes.len() != width * height * 3 {
            return Err(Error::Invalid(format!(
                "an RGB image of {width}x{height} needs {} bytes, not {}",
                width * height * 3,
                bytes.len()
            )));
        }
        Ok(Image { width, height, rgb: bytes.iter().map(|&b| b as f32 / 255.0).collect() })
    }

    /// The image as 8-bit RGB bytes (rounded, clamped).
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.rgb.iter().map(|&v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
    }

    /// Writes the image as an 8-bit RGB PNG, atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        save_png(path, self.width, self.height, image::ExtendedColorType::Rgb8, &self.to_rgb8())
    }

    /// The window of `width` x `height` pixels at (`x0`, `y0`), which must lie inside the image.
    pub fn crop(&self, x0: usize, y0: usize, width: usize, height: usize) -> Image {
        assert!(x0 + width <= self.width && y0 + height <= self.height, "crop window outside the image");
        let mut rgb = Vec::with_capacity(width * height * 3);
        for y in y0..y0 + height {
            let row = (y * self.width + x0) * 3;
            rgb.extend_from_slice(&self.rgb[row..row + width * 3]);
        }
        Image { width, height, rgb }
    }

    /// Bilinear resize (align_corners = false, no antialiasing: PyTorch's
    /// `F.interpolate(mode="bilinear")`).
    pub fn resize(&self, width: usize, height: usize) -> Image {
        Image { width, height, rgb: resize_bilinear(&self.rgb, self.width, self.height, 3, width, height) }
    }
}

/// The model input for a batch of images (docs/DESIGN.md step 1): each resized to `size` x `size`
/// (bilinear), then normalized per channel, as a planar [B, 3, S, S] tensor's data.
pub fn preprocess(images: &[&Image], size: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let plane = size * size;
    let mut out = vec![0.0f32; images.len() * 3 * plane];
    for (b, img) in images.iter().enumerate() {
        let resized = resize_bilinear(&img.rgb, img.width, img.height, 3, size, size);
        for p in 0..plane {
            for c in 0..3 {
                out[(b * 3 + c) * plane + p] = (resized[p * 3 + c] - mean[c]) / std[c];
            }
        }
    }
    out
}

/// Source coordinate and weights of one output index for align_corners = false.
fn bilinear_taps(dst: usize, dst_len: usize, src_len: usize) -> (usize, usize, f32) {
    let scale = src_len as f32 / dst_len as f32;
    let x = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
    let x0 = (x.floor() as usize).min(src_len - 1);
    let x1 = (x0 + 1).min(src_len - 1);
    (x0, x1, x - x0 as f32)
}

/// Bilinear resize of interleaved [H, W, C] data, PyTorch semantics (align_corners = false).
pub fn resize_bilinear(src: &[f32], sw: usize, sh: usize, channels: usize, dw: usize, dh: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; dw * dh * channels];
    let cols: Vec<_> = (0..dw).map(|x| bilinear_taps(x, dw, sw)).collect();
    for y in 0..dh {
        let (y0, y1, fy) = bilinear_taps(y, dh, sh);
        for (x, &(x0, x1, fx)) in cols.iter().enumerate() {
            for c in 0..channels {
                let at = |yy: usize, xx: usize| src[(yy * sw + xx) * channels + c];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out[(y * dw + x) * channels + c] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    out
}

/// Class per pixel of planar logits [K, sh, sw] bilinearly resized to `dw` x `dh` (PyTorch
/// semantics, align_corners = false): the argmax over K (the first on ties) of each output
/// pixel's interpolated logits, row by row, without holding the resized logits. At the logits'
/// own size it is their argmax.
pub fn argmax_resized(logits: &[f32], classes: usize, sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<u8> {
    assert!(classes <= 256 && logits.len() == classes * sw * sh, "logits [{classes}, {sh}, {sw}]");
    let plane = sw * sh;
    let cols: Vec<_> = (0..dw).map(|x| bilinear_taps(x, dw, sw)).collect();
    let mut out = Vec::with_capacity(dw * dh);
    for y in 0..dh {
        let (y0, y1, fy) = bilinear_taps(y, dh, sh);
        for &(x0, x1, fx) in &cols {
            let mut best = (0u8, f32::NEG_INFINITY);
            for k in 0..classes {
                let at = |yy: usize, xx: usize| logits[k * plane + yy * sw + xx];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                let v = top * (1.0 - fy) + bottom * fy;
                if v > best.1 {
                    best = (k as u8, v);
                }
            }
            out.push(best.0);
        }
    }
    out
}

/// A box of pixels inside an image or mask: its top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x0: usize,
    pub y0: usize,
    pub width: usize,
    pub height: usize,
}

/// A pixel whose brightest channel exceeds this is content, not the dark surround of a field of
/// view.
pub const FIELD_OF_VIEW_LEVEL: f32 = 0.1;

/// Whether an RGB pixel is content, not the dark surround of a field of view: its brightest
/// channel above [`FIELD_OF_VIEW_LEVEL`].
fn content(px: &[f32]) -> bool {
    px.iter().any(|&v| v > FIELD_OF_VIEW_LEVEL)
}

/// The field of view of an image whose content sits in a dark surround, such as the round field
/// of a fundus camera in a wider frame (docs/DESIGN.md, "Field of view"): the box of the rows
/// and columns in which more than 5 % of the pixels are content (brightest
/// channel above [`FIELD_OF_VIEW_LEVEL`]). `None`, meaning the whole image, where that box
/// spans at least 90 % of both sides (a field that fills the frame stays as it is) or less
/// than a quarter of either (too little content to trust the box, e.g. a dark image).
pub fn field_of_view(image: &Image) -> Option<Rect> {
    let (w, h) = (image.width, image.height);
    let mut rows = vec![0usize; h];
    let mut cols = vec![0usize; w];
    for (i, px) in image.rgb.chunks_exact(3).enumerate() {
        if content(px) {
            rows[i / w] += 1;
            cols[i % w] += 1;
        }
    }
    let span = |counts: &[usize], across: usize| {
        let content = |&n: &usize| n * 20 > across;
        let first = counts.iter().position(content)?;
        let last = counts.iter().rposition(content)?;
        Some((first, last + 1 - first))
    };
    let ((x0, bw), (y0, bh)) = (span(&cols, h)?, span(&rows, w)?);
    let fills = bw * 10 >= w * 9 && bh * 10 >= h * 9;
    let scant = bw * 4 < w || bh * 4 < h;
    (!fills && !scant).then_some(Rect { x0, y0, width: bw, height: bh })
}

/// Whether `image` shows a whole round field of view (docs/DESIGN.md, "Zoom-out"): each of
/// its four corner squares, of side an eighth of its shorter side, has at least 90 % of its
/// pixels dark (no channel above [`FIELD_OF_VIEW_LEVEL`]). A round field in a rectangular
/// frame (or in the box [`field_of_view`] crops to) leaves every corner outside the circle: a
/// circle inscribed in a square misses the corner squares of an eighth of the side entirely. A
/// close-up, a crop inside the field or across its edge, has a corner inside the field.
pub fn whole_field(image: &Image) -> bool {
    let (w, h) = (image.width, image.height);
    let c = (w.min(h) / 8).max(1);
    let dark_corner = |x0: usize, y0: usize| {
        let dark = (y0..y0 + c)
            .flat_map(|y| (x0..x0 + c).map(move |x| y * w + x))
            .filter(|&i| !content(&image.rgb[i * 3..i * 3 + 3]))
            .count();
        dark * 10 >= c * c * 9
    };
    [(0, 0), (w - c, 0), (0, h - c), (w - c, h - c)].into_iter().all(|(x, y)| dark_corner(x, y))
}

/// A segmentation mask: one class index per pixel, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width` class indices.
    pub labels: Vec<u8>,
}

impl Mask {
    /// The bounding box (x_lo, x_hi, y_lo, y_hi, inclusive) of the foreground (labels other
    /// than 0) inside the window of `width` x `height` at (`x0`, `y0`); `None` without any.
    pub fn foreground_box(&self, x0: usize, y0: usize, width: usize, height: usize) -> Option<[usize; 4]> {
        let mut b: Option<[usize; 4]> = None;
        for y in y0..y0 + height {
            for x in x0..x0 + width {
                if self.labels[y * self.width + x] != 0 {
                    let [xl, xh, yl, yh] = b.unwrap_or([x, x, y, y]);
                    b = Some([xl.min(x), xh.max(x), yl.min(y), yh.max(y)]);
                }
            }
        }
        b
    }

    /// Reads a mask PNG: 8- or 16-bit grey (pixel value = class index), or grey stored as RGB
    /// with equal channels. With `classes`, values must be below it.
    pub fn load(path: &Path, classes: Option<usize>) -> Result<Mask> {
        Mask::decode(&read_file(path)?, &path.display().to_string(), classes)
    }

    /// Decodes mask bytes; `source` names them in errors.
    pub fn decode(bytes: &[u8], source: &str, classes: Option<usize>) -> Result<Mask> {
        let img = decode_dynamic(bytes, source)?;
        let (width, height) = (img.width() as usize, img.height() as usize);
        let values: Vec<u32> = match &img {
            DynamicImage::ImageLuma8(g) => g.as_raw().iter().map(|&v| v as u32).collect(),
            DynamicImage::ImageLuma16(g) => g.as_raw().iter().map(|&v| v as u32).collect(),
            // Converting keeps the bit depth, so values stay the class indices as stored.
            DynamicImage::ImageLumaA8(_) => img.to_luma8().as_raw().iter().map(|&v| v as u32).collect(),
            DynamicImage::ImageLumaA16(_) => img.to_luma16().as_raw().iter().map(|&v| v as u32).collect(),
            DynamicImage::ImageRgb16(_) | DynamicImage::ImageRgba16(_) => {
                grey_of_rgb(img.to_rgb16().pixels().map(|p| p.0.map(u32::from)), width, source)?
            }
            _ => grey_of_rgb(img.to_rgb8().pixels().map(|p| p.0.map(u32::from)), width, source)?,
        };
        // 16-bit greys written from 8-bit values are scaled by 257 by some tools; vlsa reads values as is.
        let limit = classes.unwrap_or(256);
        if let Some(i) = values.iter().position(|&v| v as usize >= limit) {
            let (x, y) = (i % width, i / width);
            return Err(format_error(
                source,
                format!(
                    "pixel ({x}, {y}) has class value {}, but there are only {limit} classes (0..={})",
                    values[i],
                    limit - 1
                ),
            ));
        }
        Ok(Mask { width, height, labels: values.into_iter().map(|v| v as u8).collect() })
    }

    /// The window of `width` x `height` at (`x0`, `y0`).
    pub fn crop(&self, x0: usize, y0: usize, width: usize, height: usize) -> Mask {
        assert!(x0 + width <= self.width && y0 + height <= self.height, "crop window outside the mask");
        let labels =
            (y0..y0 + height).flat_map(|y| self.labels[y * self.width + x0..][..width].iter().copied()).collect();
        Mask { width, height, labels }
    }

    /// This mask placed at (`x0`, `y0`) in a frame of `width` x `height`, background (0)
    /// elsewhere: how a prediction made in a window of an image becomes the image's mask.
    pub fn placed(&self, x0: usize, y0: usize, width: usize, height: usize) -> Mask {
        assert!(x0 + self.width <= width && y0 + self.height <= height, "window outside the frame");
        let mut labels = vec![0u8; width * height];
        for (y, row) in self.labels.chunks(self.width).enumerate() {
            labels[(y0 + y) * width + x0..][..self.width].copy_from_slice(row);
        }
        Mask { width, height, labels }
    }

    /// Nearest-neighbour resize (PyTorch `mode="nearest"`: source index floor(dst * in / out)).
    pub fn resize_nearest(&self, width: usize, height: usize) -> Mask {
        Mask { width, height, labels: resize_nearest(&self.labels, self.width, self.height, width, height) }
    }

    /// Writes the mask as an 8-bit grey PNG (pixel value = class index), atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        save_png(path, self.width, self.height, image::ExtendedColorType::L8, &self.labels)
    }
}

/// Nearest-neighbour resize of one value per pixel, PyTorch `mode="nearest"` semantics.
pub fn resize_nearest<T: Copy>(src: &[T], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(dw * dh);
    for y in 0..dh {
        let sy = ((y as f64 * sh as f64 / dh as f64).floor() as usize).min(sh - 1);
        for x in 0..dw {
            let sx = ((x as f64 * sw as f64 / dw as f64).floor() as usize).min(sw - 1);
            out.push(src[sy * sw + sx]);
        }
    }
    out
}

/// The class indices of a mask stored as RGB with equal channels, at its own bit depth; a pixel
/// whose channels differ makes it a colour image, which is an error naming the pixel.
fn grey_of_rgb(pixels: impl Iterator<Item = [u32; 3]>, width: usize, source: &str) -> Result<Vec<u32>> {
    let mut v = Vec::new();
    for (i, px) in pixels.enumerate() {
        if px[0] != px[1] || px[1] != px[2] {
            let (x, y) = (i % width, i / width);
            return Err(format_error(
                source,
                format!("is a colour image, not a mask: pixel ({x}, {y}) is {px:?}; a mask stores one class index per pixel as grey"),
            ));
        }
        v.push(px[0]);
    }
    Ok(v)
}

/// Encodes 8-bit pixels as PNG and writes them atomically.
pub fn save_png(
    path: &Path,
    width: usize,
    height: usize,
    color: image::ExtendedColorType,
    pixels: &[u8],
) -> Result<()> {
    let mut bytes = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut bytes),
        pixels,
        width as u32,
        height as u32,
        color,
    )
    .map_err(|e| Error::Io { path: path.display().to_string(), message: format!("cannot encode the PNG ({e})") })?;
    crate::io::write_atomic(path, &bytes).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_resized_is_the_argmax_of_the_bilinearly_resized_logits() {
        // Two classes on two pixels, doubled: the boundary falls between the middle pixels.
        assert_eq!(argmax_resized(&[1.0, 0.0, 0.0, 1.0], 2, 2, 1, 4, 1), vec![0, 0, 1, 1]);
        // Ties go to the first class; a NaN never wins.
        assert_eq!(argmax_resized(&[0.5, 0.5, 0.5, f32::NAN], 2, 2, 1, 2, 1), vec![0, 0]);
        // Against resize_bilinear per class then the argmax, up and down, odd sizes.
        let mut rng = crate::random::Rng::new(5);
        for (k, sw, sh, dw, dh) in [(3, 7, 5, 13, 9), (2, 11, 3, 4, 2), (4, 6, 6, 6, 6), (1, 3, 3, 5, 7)] {
            let logits: Vec<f32> = (0..k * sw * sh).map(|_| rng.uniform() * 4.0 - 2.0).collect();
            let planes: Vec<Vec<f32>> = logits.chunks(sw * sh).map(|p| resize_bilinear(p, sw, sh, 1, dw, dh)).collect();
            let want: Vec<u8> = (0..dw * dh)
                .map(|i| (0..k).fold(0, |best, c| if planes[c][i] > planes[best][i] { c } else { best }) as u8)
                .collect();
            assert_eq!(argmax_resized(&logits, k, sw, sh, dw, dh), want, "[{k}, {sh}, {sw}] -> {dh} x {dw}");
        }
    }

    /// `w` x `h` of black with `fill` over the box (x0, y0, bw, bh).
    fn framed(w: usize, h: usize, (x0, y0, bw, bh): (usize, usize, usize, usize), fill: f32) -> Image {
        let mut rgb = vec![0.0; w * h * 3];
        for y in y0..y0 + bh {
            for x in x0..x0 + bw {
                rgb[(y * w + x) * 3..][..3].copy_from_slice(&[fill, fill * 0.5, 0.0]);
            }
        }
        Image { width: w, height: h, rgb }
    }

    #[test]
    fn the_field_of_view_is_the_box_of_the_content_in_a_dark_surround() {
        // A wide frame: the content's box exactly, odd sizes.
        assert_eq!(
            field_of_view(&framed(61, 37, (13, 2, 33, 31), 0.6)),
            Some(Rect { x0: 13, y0: 2, width: 33, height: 31 })
        );
        // A round field in a frame half as wide again: the circle's box, less the rows and
        // columns where its chord is under 5 % of the frame.
        let (w, h, r) = (150usize, 100usize, 50.0f32);
        let mut disc = framed(w, h, (0, 0, 0, 0), 0.0);
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f32 + 0.5 - 75.0, y as f32 + 0.5 - 50.0);
                if dx * dx + dy * dy < r * r {
                    disc.rgb[(y * w + x) * 3] = 0.7;
                }
            }
        }
        let Rect { x0, y0, width: bw, height: bh } = field_of_view(&disc).unwrap();
        assert!((25..=27).contains(&x0) && (96..=100).contains(&bw), "{x0} {bw}");
        assert!(y0 <= 2 && bh >= 96, "{y0} {bh}");
        // A few bright pixels in the surround (a label) and dim noise do not widen it.
        let mut labelled = framed(80, 40, (20, 0, 40, 40), 0.5);
        for (x, y) in [(2, 37), (3, 37), (4, 38)] {
            labelled.rgb[(y * 80 + x) * 3] = 1.0;
        }
        for (i, v) in labelled.rgb.iter_mut().enumerate() {
            if *v == 0.0 {
                *v = (i % 7) as f32 * 0.014; // up to 0.084, under the level
            }
        }
        assert_eq!(field_of_view(&labelled), Some(Rect { x0: 20, y0: 0, width: 40, height: 40 }));
        // A field that fills the frame, an all-dark image and too little content: the whole image.
        assert_eq!(field_of_view(&framed(40, 40, (2, 1, 37, 38), 0.5)), None);
        assert_eq!(field_of_view(&framed(40, 40, (0, 0, 0, 0), 0.0)), None);
        assert_eq!(field_of_view(&framed(40, 40, (10, 10, 8, 30), 0.5)), None);
        // Content darker than the level is not a field of view.
        assert_eq!(field_of_view(&framed(60, 40, (10, 0, 40, 40), 0.09)), None);
    }

    /// A `w` x `h` image with a bright round field of radius `r` about (`cx`, `cy`).
    fn round_field(w: usize, h: usize, (cx, cy, r): (f32, f32, f32)) -> Image {
        let mut image = framed(w, h, (0, 0, 0, 0), 0.0);
        for y in 0..h {
            for x in 0..w {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                if dx * dx + dy * dy < r * r {
                    image.rgb[(y * w + x) * 3..][..3].copy_from_slice(&[0.6, 0.3, 0.1]);
                }
            }
        }
        image
    }

    #[test]
    fn a_whole_field_is_one_whose_four_corners_are_dark() {
        // Inscribed in its frame, odd and even sides; clipped top and bottom (a wide field's box).
        assert!(whole_field(&round_field(128, 128, (64.0, 64.0, 64.0))));
        assert!(whole_field(&round_field(37, 37, (18.5, 18.5, 18.5))));
        assert!(whole_field(&round_field(101, 83, (50.5, 41.5, 50.5))));
        // Dim noise in the surround stays dark.
        let mut noisy = round_field(64, 64, (32.0, 32.0, 32.0));
        for (i, v) in noisy.rgb.iter_mut().enumerate() {
            if *v == 0.0 {
                *v = (i % 11) as f32 * 0.009; // up to 0.09
            }
        }
        assert!(whole_field(&noisy));
        // Close-ups: inside the field (no dark corner), across its edge (two), near a corner (three).
        assert!(!whole_field(&round_field(64, 64, (32.0, 32.0, 200.0))));
        assert!(!whole_field(&round_field(64, 64, (120.0, 32.0, 100.0))));
        let mut three = round_field(64, 64, (32.0, 32.0, 32.0));
        three.rgb[..3].copy_from_slice(&[0.5, 0.5, 0.5]); // still dark: 63 of 64 pixels
        assert!(whole_field(&three));
        for y in 0..8 {
            for x in 56..64 {
                three.rgb[(y * 64 + x) * 3] = 0.5;
            }
        }
        assert!(!whole_field(&three), "one bright corner");
        // Tiny and all-dark images.
        assert!(whole_field(&framed(1, 1, (0, 0, 0, 0), 0.0)));
        assert!(!whole_field(&framed(3, 5, (0, 0, 3, 5), 0.4)));
    }

    #[test]
    fn a_mask_cropped_and_placed_back_keeps_its_window() {
        let mask = Mask { width: 5, height: 3, labels: (0..15).map(|i| (i % 4) as u8).collect() };
        let part = mask.crop(1, 1, 3, 2);
        assert_eq!(part.labels, vec![2, 3, 0, 3, 0, 1]);
        let back = part.placed(1, 1, 5, 3);
        for y in 0..3 {
            for x in 0..5 {
                let inside = (1..4).contains(&x) && (1..3).contains(&y);
                assert_eq!(back.labels[y * 5 + x], if inside { mask.labels[y * 5 + x] } else { 0 }, "({x}, {y})");
            }
        }
    }

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png).unwrap();
        bytes
    }

    #[test]
    fn grey_rgba_and_16_bit_decode_to_rgb() {
        let grey = image::GrayImage::from_raw(2, 1, vec![0, 255]).unwrap();
        let img = Image::decode(&png(DynamicImage::ImageLuma8(grey)), "g.png").unwrap();
        assert_eq!((img.width, img.height), (2, 1));
        assert_eq!(img.rgb, vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
        let rgba = image::RgbaImage::from_raw(1, 1, vec![255, 0, 51, 7]).unwrap();
        let img = Image::decode(&png(DynamicImage::ImageRgba8(rgba)), "a.png").unwrap();
        assert_eq!(img.rgb, vec![1.0, 0.0, 0.2]);
        let g16 = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(1, 1, vec![65535u16]).unwrap();
        let img = Image::decode(&png(DynamicImage::ImageLuma16(g16)), "g16.png").unwrap();
        assert_eq!(img.rgb, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn bad_bytes_are_errors_naming_the_source() {
        let e = Image::decode(b"not an image at all", "notes.txt").unwrap_err().to_string();
        assert!(e.starts_with("notes.txt: is not a PNG or JPEG image"), "{e}");
        let mut bytes = png(DynamicImage::ImageLuma8(image::GrayImage::new(8, 8)));
        bytes.truncate(bytes.len() / 2);
        let e = Image::decode(&bytes, "cut.png").unwrap_err().to_string();
        assert!(e.starts_with("cut.png: cannot be decoded as Png"), "{e}");
    }

    #[test]
    fn masks_check_classes_and_colour() {
        let m = image::GrayImage::from_raw(3, 1, vec![0, 1, 2]).unwrap();
        let bytes = png(DynamicImage::ImageLuma8(m));
        assert_eq!(Mask::decode(&bytes, "m.png", Some(3)).unwrap().labels, vec![0, 1, 2]);
        let e = Mask::decode(&bytes, "m.png", Some(2)).unwrap_err().to_string();
        assert!(e.contains("pixel (2, 0) has class value 2"), "{e}");
        let rgb = image::RgbImage::from_raw(1, 1, vec![1, 2, 3]).unwrap();
        let e = Mask::decode(&png(DynamicImage::ImageRgb8(rgb)), "c.png", None).unwrap_err().to_string();
        assert!(e.contains("is a colour image, not a mask") && e.contains("[1, 2, 3]"), "8-bit values: {e}");
        // Grey stored as 8-bit RGB, or grey with alpha, reads as the class indices stored.
        let rgb = image::RgbImage::from_raw(2, 1, vec![1, 1, 1, 2, 2, 2]).unwrap();
        assert_eq!(Mask::decode(&png(DynamicImage::ImageRgb8(rgb)), "g.png", Some(3)).unwrap().labels, vec![1, 2]);
        let la = image::GrayAlphaImage::from_raw(2, 1, vec![2, 255, 0, 255]).unwrap();
        assert_eq!(Mask::decode(&png(DynamicImage::ImageLumaA8(la)), "la.png", Some(3)).unwrap().labels, vec![2, 0]);
    }

    #[test]
    fn bilinear_matches_pytorch_half_pixel_rule() {
        // 2 -> 4 upsampling of [0, 1]: PyTorch gives [0, 0.25, 0.75, 1].
        let out = resize_bilinear(&[0.0, 1.0], 2, 1, 1, 4, 1);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
        // 4 -> 2 downsampling averages pairs (no antialiasing needed at exactly 2x).
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 4, 1, 1, 2, 1);
        assert_eq!(out, vec![0.5, 2.5]);
        assert_eq!(resize_nearest(&[1u8, 2, 3], 3, 1, 6, 1), vec![1, 1, 2, 2, 3, 3]);
        assert_eq!(resize_nearest(&[1u8, 2, 3, 4], 4, 1, 2, 1), vec![1, 3]);
    }

    #[test]
    fn preprocess_is_planar_and_normalized() {
        let img = Image::from_rgb8(1, 1, &[255, 0, 51]).unwrap();
        let out = preprocess(&[&img], 2, [0.5; 3], [0.5; 3]);
        assert_eq!(out.len(), 12);
        assert!(out[..4].iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(out[4..8].iter().all(|&v| (v + 1.0).abs() < 1e-6));
        assert!(out[8..].iter().all(|&v| (v + 0.6).abs() < 1e-6));
    }

    #[test]
    fn png_round_trip() {
        let dir = std::env::temp_dir().join(format!("vlsa-img-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mask = Mask { width: 2, height: 2, labels: vec![0, 1, 2, 1] };
        mask.save_png(&dir.join("m.png")).unwrap();
        assert_eq!(Mask::load(&dir.join("m.png"), Some(3)).unwrap(), mask);
        let img = Image::from_rgb8(2, 1, &[1, 2, 3, 4, 5, 6]).unwrap();
        img.save_png(&dir.join("i.png")).unwrap();
        assert_eq!(Image::load(&dir.join("i.png")).unwrap(), img);
        let e = Image::load(&dir.join("missing.png")).unwrap_err().to_string();
        assert!(e.contains("missing.png"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
