//! Every compute pipeline of every shader builds on every adapter of this machine besides the
//! one the other tests run on (on a CPU-only Linux machine with Mesa: llvmpipe GL beside
//! lavapipe Vulkan). The other tests force every kernel path on their one adapter, but wgpu
//! translates WGSL per backend (SPIR-V for Vulkan, GLSL for OpenGL, MSL, HLSL), and a shader
//! the one backend takes can fail on another's compiler: a helper taking a storage texture as
//! a parameter compiled for Vulkan and not for GL. Modules that use subgroup operations are
//! built only where the adapter has them, as vlsa launches them only there.

use std::sync::{Arc, Mutex};

use vlsa_kernels::pipeline::expand_includes;

/// Whether the WGSL (comments aside) uses subgroup operations.
fn uses_subgroups(source: &str) -> bool {
    source.lines().any(|l| l.split("//").next().unwrap_or("").contains("subgroup"))
}

#[test]
fn every_shader_builds_on_every_other_adapter() {
    let default = vlsa_kernels::Gpu::new().unwrap();
    let default = default.info();
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some("wgsl"));
    files.sort();
    let mut failures = Vec::new();
    let mut built = 0;
    for adapter in adapters {
        let info = adapter.get_info();
        if info.name == default.name && format!("{:?}", info.backend) == default.backend {
            continue;
        }
        if !adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
            continue;
        }
        let features = adapter.features() & wgpu::Features::SUBGROUP;
        let (device, _queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            required_features: features,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .unwrap();
        // Errors arrive here as each call fails (uncaptured: some, such as a GLSL compiler's,
        // are not Validation errors), and are read after each call.
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let text = match e {
                wgpu::Error::Validation { description, .. } | wgpu::Error::Internal { description, .. } => description,
                other => other.to_string(),
            };
            sink.lock().unwrap().push(text.split_whitespace().collect::<Vec<_>>().join(" "));
        }));
        let take = || std::mem::take(&mut *errors.lock().unwrap());
        let who = format!("{} ({:?})", info.name, info.backend);
        for path in &files {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let source = std::fs::read_to_string(path).unwrap();
            let expanded = expand_includes(&name, &source).unwrap();
            if uses_subgroups(&expanded.text) && !features.contains(wgpu::Features::SUBGROUP) {
                continue;
            }
            let module = naga::front::wgsl::parse_str(&expanded.text).unwrap();
            let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&name),
                source: wgpu::ShaderSource::Wgsl(expanded.text.as_str().into()),
            });
            let errs = take();
            if !errs.is_empty() {
                failures.push(format!("{who}: {name}: {}", errs.join("; ")));
                continue;
            }
            for ep in &module.entry_points {
                let _ = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&ep.name),
                    layout: None,
                    module: &shader,
                    entry_point: Some(&ep.name),
                    compilation_options: Default::default(),
                    cache: None,
                });
                let errs = take();
                if errs.is_empty() {
                    built += 1;
                } else {
                    failures.push(format!("{who}: {name}, entry point {}: {}", ep.name, errs.join("; ")));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} pipelines failed to build:\n{}", failures.len(), failures.join("\n"));
    if built == 0 {
        eprintln!("no adapter besides {} ({}): nothing to build", default.name, default.backend);
    } else {
        eprintln!("{built} pipelines built on the other adapters");
    }
}
