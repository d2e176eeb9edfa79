//! Every WGSL file under shaders/ parses and validates with naga, and declares its bindings
//! the way vlsa's launchers expect (group 0; binding 0 uniform; storage buffers after it;
//! at most 7 storage buffers per entry point).

use vlsa_kernels::pipeline::validate_wgsl;

#[test]
fn every_shader_parses_and_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut count = 0;
    let mut entries = std::fs::read_dir(dir).expect("shaders/ exists").map(|e| e.unwrap().path()).collect::<Vec<_>>();
    entries.sort();
    for path in entries {
        if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let source = std::fs::read_to_string(&path).unwrap();
        let (module, info) = validate_wgsl(&name, &source).unwrap_or_else(|e| panic!("{e}"));
        assert!(!module.entry_points.is_empty(), "{name} has no entry point");
        for (i, ep) in module.entry_points.iter().enumerate() {
            assert_eq!(ep.stage, naga::ShaderStage::Compute, "{name}: {} is not a compute entry point", ep.name);
            let uses = info.get_entry_point(i);
            let mut storage = 0;
            for (handle, var) in module.global_variables.iter() {
                let Some(b) = &var.binding else { continue };
                assert_eq!(b.group, 0, "{name}: {} uses group {}", ep.name, b.group);
                if uses[handle].is_empty() {
                    continue;
                }
                match var.space {
                    naga::AddressSpace::Uniform => {
                        assert_eq!(b.binding, 0, "{name}: the uniform block must be binding 0")
                    }
                    naga::AddressSpace::Storage { .. } => {
                        assert!(b.binding >= 1, "{name}: storage buffers start at binding 1");
                        storage += 1;
                    }
                    _ => {}
                }
            }
            assert!(storage <= 7, "{name}: {} binds {storage} storage buffers (Metal allows 7)", ep.name);
            let [x, y, z] = ep.workgroup_size;
            assert!(x * y * z <= 256, "{name}: {} has {} invocations per workgroup", ep.name, x * y * z);
        }
        count += 1;
    }
    assert!(count >= 1, "no shaders found in {dir}");
}

#[test]
fn a_broken_shader_is_an_error_naming_the_file() {
    let err = validate_wgsl("broken.wgsl", "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("broken.wgsl"), "{msg}");
}
