//! Shader modules and compute pipelines, compiled once per process and cached.
//!
//! Each WGSL file under `shaders/` is a [`Shader`]: its name and its text, built into the
//! binary with `include_str!`. A pipeline is made per entry point on first use. Its bind group
//! layout is not left to wgpu's automatic derivation: vlsa reflects the module with naga,
//! finds which bindings the entry point really uses and with which access, and builds the
//! layout from that, so one WGSL file can hold several entry points that each use a subset of
//! the file's bindings.
//!
//! Binding convention of every vlsa shader: group 0, binding 0 is the parameter block (a
//! uniform block, or a read-only storage buffer: [`BindingKind::StorageParams`]); bindings 1..
//! are storage buffers in the order the launcher passes them.
//!
//! Shaders share helpers through one include step, applied before naga sees the text: a line
//! `#include "NAME.wgsl"` names a file of `shaders/include/` (listed in [`INCLUDES`]). The line is
//! blanked and the file's text appended after the shader's own, so every line of the shader
//! keeps its number in naga's messages; an error inside an included file is reported with that
//! file's name and line. WGSL declarations may come in any order, so appending is enough. (The
//! crate made for composing WGSL, naga_oil, does this and more, with modules, name mangling and
//! `#ifdef`s, but each release pins one naga major version (0.23 needs naga 30, so every wgpu
//! upgrade waits for it) and it adds regex, indexmap, tracing and five more crates; vlsa needs
//! one helper file shared by three shaders.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// One WGSL source file.
#[derive(Debug)]
pub struct Shader {
    /// File name under `shaders/`, e.g. `"matmul.wgsl"`.
    pub file: &'static str,
    /// The WGSL text.
    pub source: &'static str,
}

/// Declares a [`Shader`] constant for a file under the workspace's `shaders/` folder.
#[macro_export]
macro_rules! shader {
    ($name:ident, $file:literal) => {
        pub(crate) static $name: $crate::pipeline::Shader = $crate::pipeline::Shader {
            file: $file,
            source: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/", $file)),
        };
    };
}

/// The files a shader may `#include`: name and text, from `shaders/include/`.
pub const INCLUDES: &[(&str, &str)] = &[
    (
        "workgroup_reduce.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/workgroup_reduce.wgsl")),
    ),
    ("matmul_core.wgsl", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/matmul_core.wgsl"))),
    (
        "attention_core.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/attention_core.wgsl")),
    ),
    ("activation.wgsl", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/activation.wgsl"))),
    (
        "attention_storage_loads.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/attention_storage_loads.wgsl")),
    ),
    (
        "attention_broadcast.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/attention_broadcast.wgsl")),
    ),
    (
        "layer_norm_core.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/layer_norm_core.wgsl")),
    ),
    (
        "elementwise_core.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/elementwise_core.wgsl")),
    ),
    ("reduce_core.wgsl", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/reduce_core.wgsl"))),
    ("upsample_core.wgsl", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/upsample_core.wgsl"))),
    ("loss_core.wgsl", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/loss_core.wgsl"))),
    (
        "mask_head_core.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/mask_head_core.wgsl")),
    ),
    ("em_core.wgsl", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/em_core.wgsl"))),
    ("flat_texture.wgsl", include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/flat_texture.wgsl"))),
    (
        "matmul_subgroup_blocks.wgsl",
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../shaders/include/matmul_subgroup_blocks.wgsl")),
    ),
];

/// A shader's text with its includes appended, and where each appended file starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The WGSL text naga compiles.
    pub text: String,
    /// (first line, 1-based, in `text`; file name) of each included file, in order.
    pub parts: Vec<(usize, &'static str)>,
}

impl Expanded {
    /// The file and its own 1-based line number for line `line` of the expanded text.
    pub fn origin<'a>(&self, file: &'a str, line: usize) -> (&'a str, usize) {
        match self.parts.iter().rev().find(|&&(start, _)| line >= start) {
            Some(&(start, name)) => (name, line - start + 1),
            None => (file, line),
        }
    }
}

/// Resolves the `#include "NAME.wgsl"` lines of `source` (the shader `file`): each is blanked
/// and the named file appended once, after the shader's own text. Included files may not include.
pub fn expand_includes(file: &str, source: &str) -> Result<Expanded> {
    let mut text = String::with_capacity(source.len());
    let mut wanted: Vec<(&'static str, &'static str)> = Vec::new();
    for (i, line) in source.lines().enumerate() {
        match line.trim().strip_prefix("#include") {
            Some(rest) => {
                let name =
                    rest.trim().strip_prefix('"').and_then(|r| r.strip_suffix('"')).ok_or_else(|| Error::Shader {
                        file: file.into(),
                        message: format!("line {}: write an include as `#include \"NAME.wgsl\"`", i + 1),
                    })?;
                let found = INCLUDES.iter().find(|(n, _)| *n == name).ok_or_else(|| Error::Shader {
                    file: file.into(),
                    message: format!("line {}: no shader include named `{name}` in shaders/include/", i + 1),
                })?;
                if !wanted.iter().any(|(n, _)| *n == found.0) {
                    wanted.push(*found);
                }
                text.push_str("// (included below)");
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    let mut parts = Vec::new();
    for (name, body) in wanted {
        if body.lines().any(|l| l.trim().starts_with("#include")) {
            return Err(Error::Shader { file: name.into(), message: "an included file may not include others".into() });
        }
        parts.push((text.lines().count() + 1, name));
        text.push_str(body);
        if !body.ends_with('\n') {
            text.push('\n');
        }
    }
    Ok(Expanded { text, parts })
}

/// naga's report of an error at `location` in `expanded`, naming the file and line it comes
/// from when that is an included file (naga's excerpt numbers the lines of the expanded text).
fn shader_error(file: &str, expanded: &Expanded, location: Option<naga::SourceLocation>, report: String) -> Error {
    let (at, message) = match location {
        Some(loc) => {
            let (origin, line) = expanded.origin(file, loc.line_number as usize);
            if origin == file {
                (file.to_string(), report)
            } else {
                let note = format!("{report}\n(the error is at line {line} of include/{origin}, included by {file})");
                (format!("include/{origin} (included by {file})"), note)
            }
        }
        None => (file.to_string(), report),
    };
    Error::Shader { file: at, message }
}

/// What one binding of an entry point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>` at binding 0: the parameter block.
    Uniform,
    /// `var<storage, read>` at binding 0: the parameter block in a storage buffer (the matmul's),
    /// which lavapipe does not specialize the shader on (docs/DESIGN.md 9.2).
    StorageParams,
    /// `var<storage, read>`.
    StorageRead,
    /// `var<storage, read_write>`.
    StorageReadWrite,
    /// `var NAME: texture_2d<f32>`: a sampled texture read with `textureLoad`, bound from the
    /// launch's texture views in binding order. No shader of vlsa's declares one today.
    Texture,
    /// `var NAME: texture_storage_2d<rgba32float, read>`: a read-only storage texture, bound the
    /// same way: the texture operands (shaders/include/flat_texture.wgsl says why not sampled).
    StorageTexture,
}

/// A compiled entry point and the bindings it uses (sorted by binding number).
pub struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) bindings: Vec<(u32, BindingKind)>,
}

/// Parses and validates a WGSL file with naga, includes resolved; returns the module and its
/// analysis.
pub fn validate_wgsl(file: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let expanded = expand_includes(file, source)?;
    validate_expanded(file, &expanded)
}

/// [`validate_wgsl`] of an already expanded shader.
fn validate_expanded(file: &str, expanded: &Expanded) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let source = expanded.text.as_str();
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| shader_error(file, expanded, e.location(source), e.emit_to_string_with_path(source, file)))?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default()
            | naga::valid::Capabilities::SHADER_FLOAT16
            | naga::valid::Capabilities::SUBGROUP,
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .map_err(|e| shader_error(file, expanded, e.location(source), e.emit_to_string_with_path(source, file)))?;
    Ok((module, info))
}

/// The bindings of group 0 that `entry` uses, from naga's analysis.
fn entry_bindings(
    file: &str,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
    entry: &str,
) -> Result<Vec<(u32, BindingKind)>> {
    let index = module
        .entry_points
        .iter()
        .position(|ep| ep.name == entry)
        .ok_or_else(|| Error::Shader { file: file.into(), message: format!("no entry point `{entry}`") })?;
    let uses = info.get_entry_point(index);
    let mut out = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else { continue };
        if uses[handle].is_empty() {
            continue;
        }
        if binding.group != 0 {
            return Err(Error::Shader {
                file: file.into(),
                message: format!("binding group {} used; vlsa shaders use group 0 only", binding.group),
            });
        }
        let kind = match var.space {
            naga::AddressSpace::Uniform => BindingKind::Uniform,
            naga::AddressSpace::Storage { access }
                if binding.binding == 0 && !access.contains(naga::StorageAccess::STORE) =>
            {
                BindingKind::StorageParams
            }
            naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
                BindingKind::StorageReadWrite
            }
            naga::AddressSpace::Storage { .. } => BindingKind::StorageRead,
            naga::AddressSpace::Handle
                if matches!(
                    module.types[var.ty].inner,
                    naga::TypeInner::Image { class: naga::ImageClass::Storage { .. }, .. }
                ) =>
            {
                BindingKind::StorageTexture
            }
            naga::AddressSpace::Handle if matches!(module.types[var.ty].inner, naga::TypeInner::Image { .. }) => {
                BindingKind::Texture
            }
            other => {
                return Err(Error::Shader {
                    file: file.into(),
                    message: format!("binding {} in unsupported address space {other:?}", binding.binding),
                })
            }
        };
        out.push((binding.binding, kind));
    }
    out.sort_by_key(|b| b.0);
    Ok(out)
}

/// A compiled shader module with naga's parse and analysis of it (for binding reflection).
type CompiledModule = (Arc<wgpu::ShaderModule>, Arc<(naga::Module, naga::valid::ModuleInfo)>);

/// Values of a shader's pipeline-overridable constants (`override` declarations), by name.
pub type Constants<'a> = &'a [(&'static str, f64)];

/// Pipelines by (file, entry point, override constants as (name, f64 bits)).
type KernelMap = HashMap<KernelKey, Arc<Kernel>>;
type KernelKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

/// One pipeline a launch asks for: the shader, the entry point and its override constants.
#[derive(Clone, Debug)]
pub(crate) struct PipelineRequest {
    pub(crate) shader: &'static Shader,
    pub(crate) entry: &'static str,
    pub(crate) constants: Vec<(&'static str, f64)>,
}

impl PipelineRequest {
    fn key(&self) -> KernelKey {
        key(self.shader, self.entry, &self.constants)
    }
}

fn key(shader: &'static Shader, entry: &'static str, constants: Constants<'_>) -> KernelKey {
    (shader.file, entry, constants.iter().map(|&(name, v)| (name, v.to_bits())).collect())
}

/// Compiled pipelines keyed by (file, entry point, override constants); each is built once per
/// process.
#[derive(Default, Clone)]
pub(crate) struct PipelineCache {
    modules: Arc<Mutex<HashMap<&'static str, CompiledModule>>>,
    kernels: Arc<Mutex<KernelMap>>,
}

impl PipelineCache {
    /// Returns the kernel for `entry` of `shader` with its `override` constants set to
    /// `constants` (the others keep their defaults), compiling it on first use.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        shader: &'static Shader,
        entry: &'static str,
        constants: Constants<'_>,
    ) -> Result<Arc<Kernel>> {
        let key = key(shader, entry, constants);
        if let Some(k) = self.kernels.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(k.clone());
        }
        let kernel = Arc::new(self.build(device, shader, entry, constants)?);
        self.kernels.lock().unwrap_or_else(|e| e.into_inner()).insert(key, kernel.clone());
        Ok(kernel)
    }

    /// How many pipelines have been built.
    pub(crate) fn len(&self) -> usize {
        self.kernels.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Builds the pipelines of `requests` that are not built yet, on up to `threads` threads at
    /// once, and returns how many it built. Creating a pipeline is where a driver translates and
    /// optimises its shader, and drivers do that on the calling thread: lavapipe takes 0.2-0.7 s
    /// for each large matmul pipeline, so a process that needs several at once (the first
    /// forward of `vlsa segment`) spends most of its start there. The shader modules are
    /// created first, one after another; an error from any pipeline is returned after all
    /// threads have finished.
    pub(crate) fn prepare(&self, device: &wgpu::Device, requests: &[PipelineRequest], threads: usize) -> Result<usize> {
        let mut todo: Vec<&PipelineRequest> = Vec::new();
        {
            let built = self.kernels.lock().unwrap_or_else(|e| e.into_inner());
            for r in requests {
                let k = r.key();
                if !built.contains_key(&k) && !todo.iter().any(|t| t.key() == k) {
                    todo.push(r);
                }
            }
        }
        for r in &todo {
            self.module(device, r.shader)?;
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let work = || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(r) = todo.get(i) else { break };
            match self.build(device, r.shader, r.entry, &r.constants) {
                Ok(kernel) => {
                    self.kernels.lock().unwrap_or_else(|e| e.into_inner()).insert(r.key(), Arc::new(kernel));
                }
                Err(e) => {
                    first_error.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(e);
                }
            }
        };
        let threads = threads.clamp(1, todo.len().max(1));
        if threads == 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(work);
                }
            });
        }
        match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(todo.len()),
        }
    }

    /// Compiles one entry point (see [`PipelineCache::get`]).
    fn build(
        &self,
        device: &wgpu::Device,
        shader: &'static Shader,
        entry: &'static str,
        constants: Constants<'_>,
    ) -> Result<Kernel> {
        let (module, reflection) = self.module(device, shader)?;
        let bindings = entry_bindings(shader.file, &reflection.0, &reflection.1, entry)?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match kind {
                    BindingKind::Texture => wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: false },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    BindingKind::StorageTexture => wgpu::BindingType::StorageTexture {
                        access: wgpu::StorageTextureAccess::ReadOnly,
                        format: wgpu::TextureFormat::Rgba32Float,
                        view_dimension: wgpu::TextureViewDimension::D2,
                    },
                    buffer => wgpu::BindingType::Buffer {
                        ty: match buffer {
                            BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                            BindingKind::StorageRead | BindingKind::StorageParams => {
                                wgpu::BufferBindingType::Storage { read_only: true }
                            }
                            _ => wgpu::BufferBindingType::Storage { read_only: false },
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout =
            device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants, ..Default::default() },
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: shader.file.into(), message: format!("entry point `{entry}`: {e}") });
        }
        Ok(Kernel { pipeline, layout, bindings })
    }

    #[allow(clippy::type_complexity)]
    fn module(
        &self,
        device: &wgpu::Device,
        shader: &'static Shader,
    ) -> Result<(Arc<wgpu::ShaderModule>, Arc<(naga::Module, naga::valid::ModuleInfo)>)> {
        if let Some(m) = self.modules.lock().unwrap_or_else(|e| e.into_inner()).get(shader.file) {
            return Ok(m.clone());
        }
        let expanded = expand_includes(shader.file, shader.source)?;
        let reflection = Arc::new(validate_expanded(shader.file, &expanded)?);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.file),
            source: wgpu::ShaderSource::Wgsl(expanded.text.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: shader.file.into(), message: e.to_string() });
        }
        let entry = (Arc::new(module), reflection);
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).insert(shader.file, entry.clone());
        Ok(entry)
    }
}
