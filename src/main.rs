//! The `vlsa` command-line tool: thin wrappers over the library (DESIGN.md, "Command line").
//! Errors go to stderr as one sentence, with exit code 1.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vlsa::kernels::Gpu;

#[derive(Parser)]
#[command(name = "vlsa", version, about = "Vision-language semantic aggregation for medical image segmentation, on hand-written WGSL kernels")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter vlsa uses: backend, driver, device type, features and key limits.
    Info,
}

fn info() -> Result<(), String> {
    let gpu = Gpu::new().map_err(|e| e.to_string())?;
    let i = gpu.info();
    let l = &i.limits;
    println!("adapter:      {}", i.name);
    println!("backend:      {}", i.backend);
    println!("device type:  {}", i.device_type);
    println!("driver:       {}", i.driver);
    println!("timestamps:   {}", if i.timestamps { "yes (GPU-timed profiles)" } else { "no (profiles fall back to wall clock)" });
    println!("shader f16:   {}", if i.shader_f16 { "yes" } else { "no" });
    println!("limits:");
    println!("  max_buffer_size                      {} MiB", l.max_buffer_size >> 20);
    println!("  max_storage_buffer_binding_size      {} MiB", l.max_storage_buffer_binding_size >> 20);
    println!("  max_storage_buffers_per_shader_stage {}", l.max_storage_buffers_per_shader_stage);
    println!("  max_compute_invocations_per_workgroup {}", l.max_compute_invocations_per_workgroup);
    println!("  max_compute_workgroup_storage_size   {} KiB", l.max_compute_workgroup_storage_size >> 10);
    println!("  max_compute_workgroups_per_dimension {}", l.max_compute_workgroups_per_dimension);
    println!("adapters found:");
    for a in &i.all_adapters {
        println!("  {a}");
    }
    Ok(())
}

fn main() -> ExitCode {
    // Mesa's EGL probes Wayland while wgpu looks for GL adapters and prints an "error" when no
    // runtime directory is set (common on servers); give it one so the output stays clean.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("vlsa: {message}");
            ExitCode::FAILURE
        }
    }
}
