//! Kernel paths: which family of implementations the launchers use on this adapter.
//!
//! Software adapters and discrete GPUs want opposite kernels. On lavapipe every storage load is
//! a scalar loop over the 8 SIMD lanes and workgroup barriers are expensive, so register-blocked
//! kernels win, and more so when the lanes of one subgroup share operands with
//! `subgroupBroadcast` instead of each loading them. On a real GPU, shared-memory tiling with
//! barriers is the classic fast form. Every product-heavy launcher therefore has up to three
//! implementations, one per [`KernelPath`], and picks one per adapter:
//!
//! | adapter | default path |
//! |---|---|
//! | CPU (lavapipe, llvmpipe) with subgroups | [`KernelPath::Subgroup`] |
//! | CPU without subgroups (llvmpipe GL) | [`KernelPath::Registers`] |
//! | any other (discrete, integrated, virtual GPU) | [`KernelPath::Tiled`] |
//!
//! On the subgroup path the matmul's 64-column kernels may also read their operands from
//! textures ([`crate::Gpu::texture_operands`]; lavapipe's default), a choice within the path.
//!
//! One override serves tests, benches and users: `VLSA_KERNEL_PATH=registers|subgroup|tiled`
//! when the context is created, or [`crate::Gpu::set_kernel_path`] afterwards. A launcher that
//! has no implementation for the chosen path uses the nearest one it has (see
//! [`KernelPath::fallback`]), so every path runs every model on every adapter.

use std::fmt;

/// One family of kernel implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// Register-blocked, no workgroup memory, no subgroup operations: runs everywhere, and is
    /// the fast form on software adapters without subgroups (llvmpipe GL).
    Registers,
    /// Register-blocked with operands shared across one subgroup by `subgroupBroadcast`: the
    /// fast form on lavapipe. Needs `Features::SUBGROUP`.
    Subgroup,
    /// Shared-memory tiling: the fast form on discrete and integrated GPUs.
    Tiled,
}

impl KernelPath {
    /// Every path, in the order reports list them.
    pub const ALL: [KernelPath; 3] = [KernelPath::Registers, KernelPath::Subgroup, KernelPath::Tiled];

    /// The name used by `VLSA_KERNEL_PATH`, `--path` and reports.
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Registers => "registers",
            KernelPath::Subgroup => "subgroup",
            KernelPath::Tiled => "tiled",
        }
    }

    /// Parses a name as [`KernelPath::name`] writes it.
    pub fn parse(name: &str) -> Option<KernelPath> {
        KernelPath::ALL.into_iter().find(|p| p.name() == name.trim().to_ascii_lowercase())
    }

    /// The path a launcher uses when it has no implementation for `self` or the adapter cannot
    /// run it: subgroup kernels fall back to the plain register kernels.
    pub fn fallback(self) -> KernelPath {
        match self {
            KernelPath::Subgroup => KernelPath::Registers,
            other => other,
        }
    }

    /// The default path for an adapter of `device_type` (wgpu's `DeviceType` as debug text)
    /// that has (or lacks) subgroup operations.
    pub fn default_for(device_type: &str, subgroups: bool) -> KernelPath {
        match (device_type == "Cpu", subgroups) {
            (true, true) => KernelPath::Subgroup,
            (true, false) => KernelPath::Registers,
            (false, _) => KernelPath::Tiled,
        }
    }
}

impl fmt::Display for KernelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
