//! Data sets in the layout of docs/DESIGN.md: a folder with `images/NAME.{png,jpg,jpeg}` and
//! `masks/NAME.png` (same NAME; mask pixel value = class index). Real data (e.g. M&Ms or RIGA+
//! slices exported as PNG) and `vlsa synth` output load the same way.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image_io::{field_of_view, preprocess, Image, Mask};

/// One image and its mask, at the image's own size.
#[derive(Debug, Clone)]
pub struct Sample {
    /// File stem shared by the image and the mask.
    pub name: String,
    /// The image, RGB in [0, 1].
    pub image: Image,
    /// Class index per pixel, same size as the image.
    pub mask: Mask,
}

/// A whole data set in memory, samples sorted by name.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The folder it was read from.
    pub root: PathBuf,
    /// The samples, sorted by name.
    pub samples: Vec<Sample>,
}

const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

impl Dataset {
    /// Reads every image and mask under `dir`, checking that each image has a mask of the same
    /// size whose values are below `classes`.
    pub fn load(dir: &Path, classes: usize) -> Result<Dataset> {
        let images_dir = dir.join("images");
        let masks_dir = dir.join("masks");
        for d in [&images_dir, &masks_dir] {
            if !d.is_dir() {
                return Err(Error::Invalid(format!(
                    "{} is not a data set: the folder {} is missing (expected images/NAME.png and masks/NAME.png)",
                    dir.display(),
                    d.display()
                )));
            }
        }
        let mut images: Vec<(String, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&images_dir).map_err(|e| Error::io(&images_dir, e))? {
            let path = entry.map_err(|e| Error::io(&images_dir, e))?.path();
            let (Some(stem), Some(ext)) =
                (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|s| s.to_str()))
            else {
                continue;
            };
            if stem.starts_with('.')
                || !IMAGE_EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str())
                || !path.is_file()
            {
                continue;
            }
            if let Some((_, other)) = images.iter().find(|(n, _)| n == stem) {
                return Err(Error::Invalid(format!(
                    "{} and {} share the name {stem}; each image needs a unique name",
                    other.display(),
                    path.display()
                )));
            }
            images.push((stem.to_string(), path));
        }
        if images.is_empty() {
            return Err(Error::Invalid(format!("{} holds no PNG or JPEG images", images_dir.display())));
        }
        images.sort();
        let mut samples = Vec::with_capacity(images.len());
        for (name, path) in images {
            let mask_path = masks_dir.join(format!("{name}.png"));
            if !mask_path.is_file() {
                return Err(Error::Invalid(format!(
                    "{} has no mask: {} is missing",
                    path.display(),
                    mask_path.display()
                )));
            }
            let image = Image::load(&path)?;
            let mask = Mask::load(&mask_path, Some(classes))?;
            if (mask.width, mask.height) != (image.width, image.height) {
                return Err(Error::Invalid(format!(
                    "{} is {}x{} but its image {} is {}x{}; a mask must have its image's size",
                    mask_path.display(),
                    mask.width,
                    mask.height,
                    path.display(),
                    image.width,
                    image.height
                )));
            }
            samples.push(Sample { name, image, mask });
        }
        Ok(Dataset { root: dir.to_path_buf(), samples })
    }

    /// Each sample cropped to its image's field of view ([`field_of_view`]; image and mask
    /// alike): the training data of a model with `field_of_view`, which predicts on that crop.
    pub fn cropped_to_field_of_view(mut self) -> Dataset {
        for s in &mut self.samples {
            if let Some(r) = field_of_view(&s.image) {
                s.image = s.image.crop(r.x0, r.y0, r.width, r.height);
                s.mask = s.mask.crop(r.x0, r.y0, r.width, r.height);
            }
        }
        self
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The model input [B,3,S,S] (resized, normalized) and the targets [B,S,S] (class indices,
    /// nearest-resized) of the samples at `indices`.
    pub fn batch(&self, indices: &[usize], size: usize, mean: [f32; 3], std: [f32; 3]) -> (Vec<f32>, Vec<u32>) {
        let images: Vec<&Image> = indices.iter().map(|&i| &self.samples[i].image).collect();
        let input = preprocess(&images, size, mean, std);
        let target = indices
            .iter()
            .flat_map(|&i| self.samples[i].mask.resize_nearest(size, size).labels.into_iter().map(u32::from))
            .collect();
        (input, target)
    }
}
