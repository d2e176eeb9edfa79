//! Weight averaging: the mean of several model files of one configuration, tensor by tensor.
//!
//! Averaging the weights a run visits late in training (stochastic weight averaging) gives a
//! model nearer the middle of the low-loss region than any one of them. The inputs are model
//! files or training checkpoints of the same configuration, normally snapshots of one run; the
//! optimizer state of a checkpoint is not part of the model and is left out. Two tensors are
//! not plain weights:
//! - `head.em.bases`, the EM bases, a buffer of unit-length rows (docs/DESIGN.md step 7): the
//!   rows are averaged and each scaled back to unit length, as the bases update itself does;
//! - `text.class_embeddings`, frozen inputs: they must be the same in every file (files whose
//!   classes were embedded from different prompts are not snapshots of one model).

use std::collections::{BTreeMap, HashMap};

use crate::config::{expected_tensors, Config};
use crate::error::{Error, Result};
use crate::weights::{checked_tensor, HostTensor, TensorFile, CONFIG_KEY};

/// Metadata key of an averaged model: how many files, and which.
pub const AVERAGE_KEY: &str = "vlsa.average";

/// The EM bases buffer, renormalised row by row after averaging.
const BASES: &str = "head.em.bases";
/// The frozen class embeddings, which must agree across the files.
const CLASS_EMBEDDINGS: &str = "text.class_embeddings";

/// A running mean over model files, one file at a time, so averaging many checkpoints holds one
/// file and the sums in memory, never all of them.
pub struct Average {
    config: Config,
    /// Name and shape of every tensor the configuration expects, in its order.
    expected: Vec<(String, Vec<usize>)>,
    /// Per expected tensor, the sum so far (f64, so the mean does not depend on the files' order
    /// beyond the last bit of f32); for the class embeddings, the first file's values.
    sums: Vec<Vec<f64>>,
    sources: Vec<String>,
}

impl Average {
    /// Starts from the first file, whose configuration every later file must have.
    pub fn new(source: &str, file: &TensorFile) -> Result<Average> {
        let config = file.config(source)?;
        let expected = expected_tensors(&config);
        let sums = expected.iter().map(|(_, shape)| vec![0.0; shape.iter().product()]).collect();
        let mut average = Average { config, expected, sums, sources: Vec::new() };
        average.add(source, file)?;
        Ok(average)
    }

    /// Adds a file: same configuration, every expected tensor present, of its shape, finite
    /// (`weights::checked_tensor`, as a model loads), and the first file's class embeddings.
    /// A refused file leaves the sums as they were.
    pub fn add(&mut self, source: &str, file: &TensorFile) -> Result<()> {
        if let Some(first) = self.sources.first() {
            if file.config(source)? != self.config {
                return Err(Error::Invalid(format!(
                    "{source} has a different configuration from {first}; average files of one configuration \
                     (snapshots of one run)"
                )));
            }
        }
        let values = self
            .expected
            .iter()
            .map(|(name, shape)| checked_tensor(&file.tensors, name, shape, "tensor", source).map(|t| &t.data))
            .collect::<Result<Vec<_>>>()?;
        let first_file = self.sources.is_empty();
        for (((name, _), sum), v) in self.expected.iter().zip(&self.sums).zip(&values) {
            if name == CLASS_EMBEDDINGS && !first_file && sum.iter().zip(v.iter()).any(|(&s, &x)| s != x as f64) {
                return Err(Error::Invalid(format!(
                    "{name} differs between {} and {source}: their classes were embedded from different \
                     prompts, so they are not snapshots of one model",
                    self.sources[0]
                )));
            }
        }
        for (((name, _), sum), v) in self.expected.iter().zip(&mut self.sums).zip(values) {
            if name != CLASS_EMBEDDINGS || first_file {
                sum.iter_mut().zip(v).for_each(|(s, &x)| *s += x as f64);
            }
        }
        self.sources.push(source.to_string());
        Ok(())
    }

    /// The mean as a model file: the configuration, the mean of every tensor (the bases' rows
    /// scaled to unit length, the class embeddings as every file has them), and under
    /// [`AVERAGE_KEY`] the sources. At least two files.
    pub fn finish(self) -> Result<TensorFile> {
        if self.sources.len() < 2 {
            return Err(Error::Invalid(format!(
                "only one model file ({}); give at least two to average",
                self.sources.join(", ")
            )));
        }
        let n = self.sources.len() as f64;
        let mut tensors = BTreeMap::new();
        for ((name, shape), sum) in self.expected.into_iter().zip(self.sums) {
            let data: Vec<f32> = if name == CLASS_EMBEDDINGS {
                sum.iter().map(|&s| s as f32).collect()
            } else {
                let mut mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
                if name == BASES {
                    unit_rows(&mut mean, shape[1], &name)?;
                }
                mean
            };
            tensors.insert(name, HostTensor::new(&shape, data));
        }
        let metadata = HashMap::from([
            (CONFIG_KEY.to_string(), self.config.to_json()),
            (AVERAGE_KEY.to_string(), format!("mean of {} files: {}", self.sources.len(), self.sources.join(", "))),
        ]);
        Ok(TensorFile { tensors, metadata })
    }
}

/// The mean of `files` (source name, contents), as a model file; see [`Average`].
pub fn average(files: &[(String, TensorFile)]) -> Result<TensorFile> {
    let Some(((first_name, first), rest)) = files.split_first() else {
        return Err(Error::Invalid("nothing to average; give at least two model files".into()));
    };
    let mut average = Average::new(first_name, first)?;
    for (name, file) in rest {
        average.add(name, file)?;
    }
    average.finish()
}

/// Scales each row of `width` values to unit length; a row that averages to zero is an error.
fn unit_rows(data: &mut [f32], width: usize, name: &str) -> Result<()> {
    for (r, row) in data.chunks_mut(width).enumerate() {
        let norm = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
        if norm < 1e-6 {
            return Err(Error::Invalid(format!(
                "row {r} of {name} averages to zero length: the files' bases point in opposite directions, \
                 so they are not snapshots of one run"
            )));
        }
        row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small configuration (fundus-small) and a file of it whose every value is `value`,
    /// with bases rows along one axis scaled by `value`.
    fn file(value: f32) -> (Config, TensorFile) {
        let config = Config::from_json(include_str!("../configs/fundus-small.json"), "fundus-small").unwrap();
        let mut f = TensorFile::default();
        f.metadata.insert(CONFIG_KEY.into(), config.to_json());
        for (name, shape) in expected_tensors(&config) {
            let n: usize = shape.iter().product();
            let data = if name == CLASS_EMBEDDINGS { vec![0.5; n] } else { vec![value; n] };
            f.tensors.insert(name, HostTensor::new(&shape, data));
        }
        (config, f)
    }

    #[test]
    fn mean_of_every_weight_and_unit_bases() {
        let (config, a) = file(1.0);
        let (_, mut b) = file(3.0);
        // An optimizer tensor (as in a checkpoint) is not part of the model and is left out.
        b.tensors.insert("optim.m.x".into(), HostTensor::new(&[1], vec![9.0]));
        let out = average(&[("a".into(), a), ("b".into(), b)]).unwrap();
        assert_eq!(out.tensors.len(), expected_tensors(&config).len());
        assert!(out.metadata[AVERAGE_KEY].contains("2 files: a, b"));
        assert_eq!(out.config("out").unwrap(), config);
        for (name, t) in &out.tensors {
            match name.as_str() {
                CLASS_EMBEDDINGS => assert!(t.data.iter().all(|&v| v == 0.5)),
                BASES => {
                    // Every value 2 before the rows are scaled: each row becomes 1/sqrt(C).
                    let c = t.shape[1] as f32;
                    assert!(t.data.iter().all(|&v| (v - 1.0 / c.sqrt()).abs() < 1e-6), "{:?}", &t.data[..4]);
                }
                _ => assert!(t.data.iter().all(|&v| v == 2.0), "{name}"),
            }
        }
    }

    #[test]
    fn mean_is_exact_for_distinct_values() {
        let (_, a) = file(1.0);
        let (_, mut b) = file(1.0);
        let (_, c) = file(1.0);
        let name = "vision_model.embeddings.class_embedding";
        let t = b.tensors.get_mut(name).unwrap();
        t.data.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 * 3.0 + 1.0);
        let out = average(&[("a".into(), a), ("b".into(), b), ("c".into(), c)]).unwrap();
        for (i, v) in out.tensors[name].data.iter().enumerate() {
            assert_eq!(*v, i as f32 + 1.0, "{name}[{i}]");
        }
    }

    #[test]
    fn a_refused_file_leaves_the_running_mean_as_it_was() {
        let mut mean = Average::new("a", &file(1.0).1).unwrap();
        let (_, mut bad) = file(100.0);
        bad.tensors.get_mut("vision_model.embeddings.class_embedding").unwrap().data[0] = f32::INFINITY;
        assert!(mean.add("bad", &bad).is_err());
        mean.add("c", &file(3.0).1).unwrap();
        let out = mean.finish().unwrap();
        assert!(out.metadata[AVERAGE_KEY].ends_with("2 files: a, c"));
        assert!(out.tensors["vision_model.embeddings.class_embedding"].data.iter().all(|&v| v == 2.0));
    }

    #[test]
    fn bad_inputs_are_one_sentence_naming_the_file() {
        let err = |files: Vec<(String, TensorFile)>| average(&files).unwrap_err().to_string();
        assert!(err(vec![]).contains("at least two"));
        assert!(err(vec![("a".into(), file(1.0).1)]).contains("only one model file (a)"));

        let (_, mut b) = file(1.0);
        b.tensors.remove("vision_model.embeddings.class_embedding");
        let e = err(vec![("a".into(), file(1.0).1), ("b".into(), b)]);
        assert!(e.contains("b: tensor vision_model.embeddings.class_embedding [96] is missing"), "{e}");

        let (_, mut b) = file(1.0);
        b.tensors.get_mut("vision_model.embeddings.class_embedding").unwrap().shape.push(1);
        let e = err(vec![("a".into(), file(1.0).1), ("b".into(), b)]);
        assert!(e.contains("b: tensor vision_model.embeddings.class_embedding has shape"), "{e}");

        let (_, mut b) = file(1.0);
        b.tensors.get_mut("vision_model.embeddings.class_embedding").unwrap().data[3] = f32::NAN;
        let e = err(vec![("a".into(), file(1.0).1), ("b".into(), b)]);
        assert!(
            e.contains("b: tensor vision_model.embeddings.class_embedding holds a non-finite value at element 3"),
            "{e}"
        );

        let (mut config, mut b) = file(1.0);
        config.shifts = Some(2);
        b.metadata.insert(CONFIG_KEY.into(), config.to_json());
        let e = err(vec![("a".into(), file(1.0).1), ("b".into(), b)]);
        assert!(e.contains("b has a different configuration from a"), "{e}");

        let (_, mut b) = file(1.0);
        b.tensors.get_mut(CLASS_EMBEDDINGS).unwrap().data[0] = 0.25;
        let e = err(vec![("a".into(), file(1.0).1), ("b".into(), b)]);
        assert!(e.contains("text.class_embeddings differs between a and b"), "{e}");

        let (_, mut b) = file(-1.0);
        b.tensors.get_mut(CLASS_EMBEDDINGS).unwrap().data.fill(0.5);
        let e = err(vec![("a".into(), file(1.0).1), ("b".into(), b)]);
        assert!(e.contains("row 0 of head.em.bases averages to zero length"), "{e}");

        let mut no_config = file(1.0).1;
        no_config.metadata.clear();
        let e = err(vec![("a".into(), no_config), ("b".into(), file(1.0).1)]);
        assert!(e.contains("not a vlsa model"), "{e}");
    }
}
