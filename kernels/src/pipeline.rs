//! Shader modules and compute pipelines, compiled once per process and cached.
//!
//! Each WGSL file under `shaders/` is a [`Shader`]: its name and its text, built into the
//! binary with `include_str!`. A pipeline is made per entry point on first use. Its bind group
//! layout is not left to wgpu's automatic derivation: vlsa reflects the module with naga,
//! finds which bindings the entry point really uses and with which access, and builds the
//! layout from that, so one WGSL file can hold several entry points that each use a subset of
//! the file's bindings.
//!
//! Binding convention of every vlsa shader: group 0, binding 0 is the uniform parameter
//! block; bindings 1.. are storage buffers in the order the launcher passes them.

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

/// What one binding of an entry point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<uniform>`: the parameter block.
    Uniform,
    /// `var<storage, read>`.
    StorageRead,
    /// `var<storage, read_write>`.
    StorageReadWrite,
}

/// A compiled entry point and the bindings it uses (sorted by binding number).
pub struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) bindings: Vec<(u32, BindingKind)>,
}

/// Parses and validates a WGSL file with naga; returns the module and its analysis.
pub fn validate_wgsl(file: &str, source: &str) -> Result<(naga::Module, naga::valid::ModuleInfo)> {
    let module = naga::front::wgsl::parse_str(source)
        .map_err(|e| Error::Shader { file: file.to_string(), message: e.emit_to_string(source) })?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default()
            | naga::valid::Capabilities::SHADER_FLOAT16
            | naga::valid::Capabilities::SUBGROUP,
    )
    .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
    .subgroup_operations(naga::valid::SubgroupOperationSet::all())
    .validate(&module)
    .map_err(|e| Error::Shader { file: file.to_string(), message: e.emit_to_string(source) })?;
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
            naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
                BindingKind::StorageReadWrite
            }
            naga::AddressSpace::Storage { .. } => BindingKind::StorageRead,
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

/// Pipelines by (file, entry point).
type KernelMap = HashMap<(&'static str, &'static str), Arc<Kernel>>;

/// Compiled pipelines keyed by (file, entry point); each is built once per process.
#[derive(Default, Clone)]
pub(crate) struct PipelineCache {
    modules: Arc<Mutex<HashMap<&'static str, CompiledModule>>>,
    kernels: Arc<Mutex<KernelMap>>,
}

impl PipelineCache {
    /// Returns the kernel for `entry` of `shader`, compiling it on first use.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        shader: &'static Shader,
        entry: &'static str,
    ) -> Result<Arc<Kernel>> {
        if let Some(k) = self.kernels.lock().unwrap_or_else(|e| e.into_inner()).get(&(shader.file, entry)) {
            return Ok(k.clone());
        }
        let (module, reflection) = self.module(device, shader)?;
        let bindings = entry_bindings(shader.file, &reflection.0, &reflection.1, entry)?;
        let entries: Vec<wgpu::BindGroupLayoutEntry> = bindings
            .iter()
            .map(|&(binding, kind)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match kind {
                        BindingKind::Uniform => wgpu::BufferBindingType::Uniform,
                        BindingKind::StorageRead => wgpu::BufferBindingType::Storage { read_only: true },
                        BindingKind::StorageReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
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
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: shader.file.into(), message: format!("entry point `{entry}`: {e}") });
        }
        let kernel = Arc::new(Kernel { pipeline, layout, bindings });
        self.kernels.lock().unwrap_or_else(|e| e.into_inner()).insert((shader.file, entry), kernel.clone());
        Ok(kernel)
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
        let reflection = Arc::new(validate_wgsl(shader.file, shader.source)?);
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.file),
            source: wgpu::ShaderSource::Wgsl(shader.source.into()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { file: shader.file.into(), message: e.to_string() });
        }
        let entry = (Arc::new(module), reflection);
        self.modules.lock().unwrap_or_else(|e| e.into_inner()).insert(shader.file, entry.clone());
        Ok(entry)
    }
}
