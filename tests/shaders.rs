//! Every WGSL file under shaders/ parses and validates with naga, and declares its bindings
//! the way vlsa's launchers expect (group 0; binding 0 the parameter block, uniform or read-only
//! storage; storage buffers after it; at most 7 storage buffers per entry point, a storage
//! parameter block included).

use vlsa_kernels::pipeline::{expand_includes, validate_wgsl};

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
                    naga::AddressSpace::Storage { access } if b.binding == 0 => {
                        assert!(
                            !access.contains(naga::StorageAccess::STORE),
                            "{name}: a storage parameter block (binding 0) must be read-only"
                        );
                        storage += 1;
                    }
                    naga::AddressSpace::Storage { .. } => storage += 1,
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

/// A shader with the shared reductions included, and an error on line 6 of its own text.
const INCLUDING: &str = "const WG: u32 = 64u;
#include \"workgroup_reduce.wgsl\"
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    let s = workgroup_sum(1.0, lid);
    let bad: u32 = s;
}
";

#[test]
fn includes_are_appended_and_lines_keep_their_numbers() {
    let expanded = expand_includes("t.wgsl", &INCLUDING.replace("let bad: u32 = s;", "")).unwrap();
    let own = INCLUDING.lines().count();
    assert_eq!(expanded.parts, vec![(own + 1, "workgroup_reduce.wgsl")]);
    assert_eq!(expanded.text.lines().nth(4), INCLUDING.lines().nth(4), "line 5 moved");
    assert!(expanded.text.contains("fn workgroup_max"));
    assert_eq!(expanded.origin("t.wgsl", 3), ("t.wgsl", 3));
    assert_eq!(expanded.origin("t.wgsl", own + 2), ("workgroup_reduce.wgsl", 2));
    validate_wgsl("t.wgsl", &INCLUDING.replace("let bad: u32 = s;", "")).unwrap();
}

#[test]
fn an_error_after_an_include_names_the_shader_and_its_own_line() {
    let msg = validate_wgsl("t.wgsl", INCLUDING).unwrap_err().to_string();
    assert!(msg.contains("t.wgsl:6:"), "{msg}");
}

#[test]
fn an_error_inside_an_included_file_names_that_file() {
    // The including shader forgets WG, which only the included file uses.
    let msg = validate_wgsl("t.wgsl", "#include \"workgroup_reduce.wgsl\"\n").unwrap_err().to_string();
    assert!(msg.contains("include/workgroup_reduce.wgsl (included by t.wgsl)"), "{msg}");
    assert!(msg.contains(" of include/workgroup_reduce.wgsl, included by t.wgsl"), "{msg}");
}

#[test]
fn an_unknown_include_is_an_error_naming_it() {
    let msg = validate_wgsl("t.wgsl", "#include \"nowhere.wgsl\"\n").unwrap_err().to_string();
    assert!(msg.contains("t.wgsl") && msg.contains("nowhere.wgsl") && msg.contains("line 1"), "{msg}");
    let msg = validate_wgsl("t.wgsl", "\n#include nowhere.wgsl\n").unwrap_err().to_string();
    assert!(msg.contains("line 2"), "{msg}");
}
