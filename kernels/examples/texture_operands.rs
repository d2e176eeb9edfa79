//! Texture-operand probe for kernel authors: the subgroup path's 64 x 64 block product (8 rows x
//! 64 columns per lane, B shared by `subgroupBroadcast`; shaders/matmul_subgroup.wgsl,
//! `subgroup_wide_nn`) written twice, once reading A and B from storage buffers as vlsa's
//! matmul does and once reading the same values from two rgba32float textures
//! (`textureLoad`), run on the same data in one process and checked against each other and
//! against f64 at a few entries.
//!
//! Why: Mesa 22.3's lavapipe compiles a per-lane storage load into a loop over the SIMD lanes
//! that inserts each lane's value into a vector through the stack, while a texel fetch becomes a
//! gather. How much that costs depends on the CPU under lavapipe (README, "What limits
//! lavapipe"); this probe measures what reading the operands as textures would buy on the
//! machine at hand.
//!
//!     cargo run --release -p vlsa-kernels --example texture_operands [-- M N K]
//!
//! M, N and K must be multiples of 64 (no edge handling: the probe's blocks are whole). Prints
//! the fastest of three products per operand source, three rounds alternating, in GFLOP/s. The
//! texture upload is not timed: a matmul on textures would add one copy of each operand.
//! Needs an adapter with subgroups (lavapipe; not llvmpipe GL).

use std::fmt::Write;
use std::time::Instant;

use wgpu::util::DeviceExt;

/// The probe's WGSL: `mm_storage` and `mm_texture`, the same block product on two operand sources.
fn shader() -> String {
    let mut s = String::from(
        "@group(0) @binding(0) var<storage, read> dims: vec4<u32>; // M, N, K\n\
         @group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>; // A [M, K]\n\
         @group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>; // B [K, N]\n\
         @group(0) @binding(3) var<storage, read_write> out4: array<vec4<f32>>;\n\
         @group(0) @binding(4) var ta: texture_2d<f32>; // A: K / 4 texels wide, M high\n\
         @group(0) @binding(5) var tb: texture_2d<f32>; // B: N / 4 texels wide, K high\n\
         alias Row = array<vec4<f32>, 8>;\n\
         alias Slice = array<vec4<f32>, 32>;\n\
         alias Share = array<vec4<f32>, 4>;\n",
    );
    // c[q] += a.x B[k, 4q..] + a.y B[k+1, 4q..] + a.z B[k+2, 4q..] + a.w B[k+3, 4q..]
    s += "fn fma_row(c: ptr<function, Row>, a: vec4<f32>, b: ptr<function, Slice>) {\n";
    s += "    let ax = vec4<f32>(a.x); let ay = vec4<f32>(a.y); let az = vec4<f32>(a.z); let aw = vec4<f32>(a.w);\n";
    for q in 0..8 {
        let (b0, b1, b2, b3) = (q, 8 + q, 16 + q, 24 + q);
        writeln!(s, "    (*c)[{q}] = fma(aw, (*b)[{b3}], fma(az, (*b)[{b2}], fma(ay, (*b)[{b1}], fma(ax, (*b)[{b0}], (*c)[{q}]))));").unwrap();
    }
    s += "}\n";
    // Slice entry e (row k + e / 8, columns 4 (e % 8) ..) lives in lane e / 4, share e % 4.
    s += "fn share(b: ptr<function, Slice>, s: ptr<function, Share>) {\n";
    for e in 0..32 {
        writeln!(s, "    (*b)[{e}] = subgroupBroadcast((*s)[{}], {}u);", e % 4, e / 4).unwrap();
    }
    s += "}\n";
    for source in ["storage", "texture"] {
        // Row r of this lane's A at k..k+4; B[k + lane / 2, col + 16 (lane % 2) + 4i ..] for i < 4.
        let load_a = |r: usize| match source {
            "storage" => format!("a4[((row0 + {r}u) * K + k) / 4u]"),
            _ => format!("textureLoad(ta, vec2<u32>(k / 4u, row0 + {r}u), 0)"),
        };
        let load_b = |i: usize, half: usize| {
            let col = format!("col0 + {}u + 16u * (lane % 2u) + {}u", 32 * half, 4 * i);
            match source {
                "storage" => format!("b4[((k + lane / 2u) * N + {col}) / 4u]"),
                _ => format!("textureLoad(tb, vec2<u32>(({col}) / 4u, k + lane / 2u), 0)"),
            }
        };
        writeln!(s, "@compute @workgroup_size(8)").unwrap();
        writeln!(
            s,
            "fn mm_{source}(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {{"
        )
        .unwrap();
        s += "    let N = dims.y; let K = dims.z;\n";
        s += "    let col0 = wid.x * 64u; let row0 = wid.y * 64u + lane * 8u;\n";
        s += "    var a: Row; var sl: Share; var sr: Share; var bl: Slice; var br: Slice;\n";
        for r in 0..8 {
            writeln!(s, "    var l{r}: Row; var r{r}: Row;").unwrap();
        }
        s += "    for (var k = 0u; k < K; k += 4u) {\n";
        for r in 0..8 {
            writeln!(s, "        a[{r}] = {};", load_a(r)).unwrap();
        }
        for i in 0..4 {
            writeln!(s, "        sl[{i}] = {}; sr[{i}] = {};", load_b(i, 0), load_b(i, 1)).unwrap();
        }
        s += "        share(&bl, &sl); share(&br, &sr);\n";
        for r in 0..8 {
            writeln!(s, "        fma_row(&l{r}, a[{r}], &bl); fma_row(&r{r}, a[{r}], &br);").unwrap();
        }
        s += "    }\n";
        // Both entry points bind every resource (one bind group layout); the other source's
        // reads add zero once per lane.
        s += "    let zero = 0.0 * (textureLoad(ta, vec2<u32>(0u), 0).x + textureLoad(tb, vec2<u32>(0u), 0).x + a4[0].x + b4[0].x);\n";
        for r in 0..8 {
            for q in 0..8 {
                let at = |c: usize| format!("((row0 + {r}u) * N + col0 + {c}u) / 4u");
                writeln!(s, "    out4[{}] = l{r}[{q}] + zero; out4[{}] = r{r}[{q}];", at(4 * q), at(32 + 4 * q))
                    .unwrap();
            }
        }
        s += "}\n";
    }
    s
}

fn main() {
    let dims: Vec<usize> =
        std::env::args().skip(1).map(|a| a.parse().expect("usage: texture_operands [M N K]")).collect();
    let (m, n, k) = match dims[..] {
        [] => (1024, 1024, 1024),
        [m, n, k] if m % 64 == 0 && n % 64 == 0 && k % 64 == 0 && m > 0 && n > 0 && k > 0 => (m, n, k),
        _ => {
            eprintln!("texture_operands: give M N K, each a positive multiple of 64");
            std::process::exit(2);
        }
    };
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let Some(adapter) = adapters.into_iter().find(|a| a.features().contains(wgpu::Features::SUBGROUP)) else {
        eprintln!("texture_operands: no adapter with subgroup operations (lavapipe has them; llvmpipe GL does not)");
        std::process::exit(2);
    };
    eprintln!("adapter: {}", adapter.get_info().name);
    let limits = adapter.limits();
    let side = limits.max_texture_dimension_2d as usize;
    if m.max(k) > side || (k / 4).max(n / 4) > side {
        eprintln!("texture_operands: a {m} x {k} or {k} x {n} operand does not fit a {side}-texel texture");
        std::process::exit(2);
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: wgpu::Features::SUBGROUP,
        required_limits: limits,
        ..Default::default()
    }))
    .expect("a device");
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 101.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 97.0).collect();
    // A row-major matrix of `cols` floats per row as a texture of cols / 4 rgba32float texels per row.
    let texture = |data: &[f32], cols: usize, rows: usize| {
        let size = wgpu::Extent3d { width: (cols / 4) as u32, height: rows as u32, depth_or_array_layers: 1 };
        let t = device.create_texture(&wgpu::TextureDescriptor {
            label: None,
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        queue.write_texture(
            t.as_image_copy(),
            bytemuck::cast_slice(data),
            wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some((cols * 4) as u32), rows_per_image: None },
            size,
        );
        t.create_view(&Default::default())
    };
    let (ta, tb) = (texture(&a, k, m), texture(&b, n, k));
    let storage = |bytes: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE,
        })
    };
    let dims = storage(bytemuck::cast_slice(&[m as u32, n as u32, k as u32, 0]));
    let (sa, sb) = (storage(bytemuck::cast_slice(&a)), storage(bytemuck::cast_slice(&b)));
    let bytes = (m * n * 4) as u64;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("texture_operands"),
        source: wgpu::ShaderSource::Wgsl(shader().into()),
    });
    let wait = || device.poll(wgpu::PollType::wait_indefinitely()).expect("the device");
    let mut results: Vec<Vec<f32>> = Vec::new();
    let mut best_of = [f64::MAX; 2];
    for round in 0..3 {
        for (i, entry) in ["mm_storage", "mm_texture"].into_iter().enumerate() {
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry { binding: 0, resource: dims.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 1, resource: sa.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 2, resource: sb.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 3, resource: out.as_entire_binding() },
                    wgpu::BindGroupEntry { binding: 4, resource: wgpu::BindingResource::TextureView(&ta) },
                    wgpu::BindGroupEntry { binding: 5, resource: wgpu::BindingResource::TextureView(&tb) },
                ],
            });
            let mut best = f64::MAX;
            for _ in 0..3 {
                let mut encoder = device.create_command_encoder(&Default::default());
                {
                    let mut pass = encoder.begin_compute_pass(&Default::default());
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &bind, &[]);
                    pass.dispatch_workgroups((n / 64) as u32, (m / 64) as u32, 1);
                }
                let start = Instant::now();
                queue.submit([encoder.finish()]);
                wait();
                best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
            best_of[i] = best_of[i].min(best);
            let gflops = 2.0 * (m * n * k) as f64 / best / 1e6;
            println!("round {round} {entry:<10} {m}x{n}x{k} {best:8.2} ms {gflops:6.1} GFLOP/s");
            if round == 0 {
                let mut encoder = device.create_command_encoder(&Default::default());
                encoder.copy_buffer_to_buffer(&out, 0, &readback, 0, bytes);
                queue.submit([encoder.finish()]);
                readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
                wait();
                results.push(bytemuck::cast_slice(&readback.slice(..).get_mapped_range().expect("mapped")).to_vec());
                readback.unmap();
            }
        }
    }
    let mut worst = 0f64;
    for (i, j) in [(0, 0), (m - 1, n - 1), (m / 3, n / 2), (17, 63)] {
        let want: f64 = (0..k).map(|kk| a[i * k + kk] as f64 * b[kk * n + j] as f64).sum();
        for got in &results {
            worst = worst.max((got[i * n + j] as f64 - want).abs() / (1.0 + want.abs()));
        }
    }
    let same = results[0] == results[1];
    println!(
        "texture / storage speed {:.2}x (fastest of each); outputs identical: {same}; error against f64: {worst:.1e}",
        best_of[0] / best_of[1]
    );
    if !same || worst > 1e-4 {
        eprintln!("texture_operands: the two operand sources disagree or miss the f64 reference");
        std::process::exit(1);
    }
}
