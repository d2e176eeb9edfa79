//! The frozen text encoder (docs/DESIGN.md step 7): a BERT sentence encoder (all-MiniLM-L6-v2) and
//! its WordPiece tokenizer, read from a Hugging Face model folder and run on vlsa's own ops.
//! It turns class prompts into the `[K, Dt]` class embeddings a model carries; it is not
//! trained and has no gradients. Getting the weights is `scripts/fetch-minilm.sh`'s job.
//!
//! ```no_run
//! # fn main() -> vlsa::Result<()> {
//! let gpu = vlsa::Gpu::new()?;
//! let encoder = vlsa::text::TextEncoder::load(&gpu, std::path::Path::new(".cache/minilm"))?;
//! let embeddings = encoder.embed(&["the optic disc", "the optic cup"])?; // [2, encoder.dim()]
//! # Ok(()) }
//! ```

mod encoder;
mod tokenizer;
mod unicode_tables;

pub use encoder::{BertConfig, TextEncoder};
pub use tokenizer::Tokenizer;
