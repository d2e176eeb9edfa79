//! Embedding vlsa in a program: load a model, segment an image held in memory, use the mask.
//!
//! `cargo run --release --example segment -- [MODEL.safetensors] [IMAGE]`
//! (defaults: the shipped fundus model and the sample retina photo).

use std::error::Error;
use std::path::Path;

use vlsa::image_io::Image;
use vlsa::model::Model;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = args.next().unwrap_or_else(|| "weights/vlsa-fundus-tiny.safetensors".into());
    let image_path = args.next().unwrap_or_else(|| "samples/retina.jpg".into());

    // 1. A GPU (the best adapter wgpu finds) and a model file.
    let gpu = vlsa::Gpu::new()?;
    let model = Model::load(&gpu, Path::new(&model_path))?;

    // 2. An image buffer: PNG/JPEG bytes from anywhere (or Image::from_rgb8 for raw pixels).
    let bytes = std::fs::read(&image_path)?;
    let image = Image::decode(&bytes, &image_path)?;

    // 3. One mask per image, at the image's own size: a class index per pixel.
    let mask = model.segment(&[&image])?.remove(0);

    for (k, class) in model.config.classes.iter().enumerate() {
        let pixels = mask.labels.iter().filter(|&&l| l as usize == k).count();
        println!("{class:<24} {pixels:>8} pixels ({:.1}%)", 100.0 * pixels as f64 / mask.labels.len() as f64);
    }
    Ok(())
}
