//! The GPU context: adapter choice, device, error capture, uploads and readbacks, and the
//! recorder that batches kernel dispatches into as few submits as possible.
//!
//! Adapter choice: a discrete GPU first, then an integrated one, then a virtual one, then a CPU
//! (software) adapter; native backends (Vulkan, Metal, DX12) before GL at equal rank.
//! `VLSA_ADAPTER=<substring>` picks the first adapter whose name contains it, and wgpu's own
//! `WGPU_BACKEND` (e.g. `gl`, `vulkan`) restricts the backends searched.
//!
//! Errors: wgpu reports most failures asynchronously. vlsa installs an uncaptured-error
//! handler that stores the first error instead of panicking, and a device-lost callback; both
//! are turned into [`Error`] values at the next flush, sync or readback. Pipeline and buffer
//! creation use error scopes so that a bad shader or an out-of-memory allocation is reported
//! where it happens.
//!
//! Batching: dispatches are recorded into one open command encoder and submitted when a
//! readback needs the results, when [`Gpu::flush`]/[`Gpu::sync`] is called, or every
//! [`SUBMIT_EVERY`] dispatches, so the GPU starts early and the queue never holds an unbounded
//! command buffer.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::buffer::{size_class, BufferPool, Contents, ContentsWatch, GpuBuffer, PoolStats, STORAGE_USAGE};
use crate::cpu_threads::{self, Workers};
use crate::path::KernelPath;
use crate::pipeline::{BindingKind, Constants, Kernel, PipelineCache, PipelineRequest, Shader};
use crate::profiler::{DispatchRecord, KernelLabel, Profile, Timing};
use crate::{Error, Result};

/// Dispatches recorded before an automatic submit: small enough that the GPU starts on the
/// first part of a training step while the host records the rest, large enough that submits
/// stay few (a default-config training step is a few hundred dispatches).
pub const SUBMIT_EVERY: usize = 128;
/// Timestamp queries per query set (two per dispatch).
const QUERY_CAPACITY: u32 = 512;
/// Bytes per block of the parameter arena (each block is bound as a uniform or a read-only
/// storage buffer, whichever the kernel declares at binding 0).
const PARAM_BLOCK: u64 = 64 * 1024;

/// What vlsa needs from every adapter; checked when the device is created.
const MIN_STORAGE_BUFFERS: u32 = 7;
const MIN_INVOCATIONS: u32 = 256;
const MIN_WORKGROUP_MEMORY: u32 = 16 * 1024;
/// Read-only storage textures the texture-operand kernels bind at most (the attention's six
/// streamed operands); an adapter with fewer runs without texture operands.
pub const OPERAND_TEXTURES_MAX: u32 = 6;

/// Facts about the adapter in use, for `vlsa info` and for reports.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    /// Adapter name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Backend: Vulkan, Metal, Dx12, Gl.
    pub backend: String,
    /// Device type: DiscreteGpu, IntegratedGpu, VirtualGpu, Cpu, Other.
    pub device_type: String,
    /// Driver name and version information.
    pub driver: String,
    /// Whether GPU timestamp queries are available (precise profiling).
    pub timestamps: bool,
    /// Whether 16-bit floats are available in shaders.
    pub shader_f16: bool,
    /// Whether subgroup operations (`subgroupBroadcast`, ...) are available in compute shaders.
    pub subgroups: bool,
    /// Smallest and largest subgroup size the adapter reports (lavapipe: 8 and 8).
    pub subgroup_size: (u32, u32),
    /// The device's limits.
    pub limits: wgpu::Limits,
    /// Every adapter found, as "name (backend, type)".
    pub all_adapters: Vec<String>,
}

/// The subgroup kernels' workgroup: 8 invocations, which must form one subgroup.
pub const SUBGROUP_LANES: u32 = 8;

impl GpuInfo {
    /// Whether the subgroup kernels (the matmul's and attention's) can run here: subgroup
    /// operations, and a smallest subgroup of at least [`SUBGROUP_LANES`] invocations, so that
    /// a workgroup of 8 is one subgroup. Where not, their launchers fall back to the register
    /// kernels.
    pub fn runs_subgroup_kernels(&self) -> bool {
        self.subgroups && self.subgroup_size.0 >= SUBGROUP_LANES
    }

    /// Whether the adapter runs on the CPU (lavapipe, llvmpipe GL): the kernels whose best
    /// schedule differs there (fewer, larger workgroups; no barriers) ask this.
    pub fn is_cpu(&self) -> bool {
        self.device_type == "Cpu"
    }
}

/// One kernel launch: a shader entry point, its parameter block, its storage buffers (bound
/// at bindings 1, 2, ... in order) and its grid.
pub struct Dispatch<'a> {
    /// The WGSL file.
    pub shader: &'static Shader,
    /// The entry point.
    pub entry: &'static str,
    /// Bytes of the parameter block (binding 0: uniform, or read-only storage for the matmul); empty for none.
    pub params: &'a [u8],
    /// Storage buffers for bindings 1..=n.
    pub buffers: &'a [&'a GpuBuffer],
    /// Workgroup counts in x, y, z.
    pub workgroups: [u32; 3],
    /// What to call it in a profile.
    pub label: KernelLabel,
}

/// An operand a launch reads as a texture ([`Gpu::dispatch_with_operand_textures`]): the first
/// `len` elements of `src`, row-major, as an rgba32float texture `row_floats / 4` texels wide
/// and `rows` high. A *matrix* operand ([`OperandTexture::matrix`]) keeps the operand's own rows
/// (`len = rows * row_floats`); a *flat* one ([`OperandTexture::flat`]) wraps a buffer of any
/// length at [`OperandTexture::FLAT_ROW_FLOATS`], so that vec4 `i` is texel `(i % 1024, i /
/// 1024)` and only the last row may be partial. `row_floats` must be a positive multiple of 64
/// (texture copies move rows of a multiple of 256 bytes), `len` a multiple of 4, and both sides
/// within `max_texture_dimension_2d`.
#[derive(Clone, Copy)]
pub struct OperandTexture<'a> {
    /// The buffer holding the operand.
    pub src: &'a GpuBuffer,
    /// Floats per row (the operand's contiguous axis, or [`OperandTexture::FLAT_ROW_FLOATS`]).
    pub row_floats: usize,
    /// Rows (batch elements stacked).
    pub rows: usize,
    /// Elements copied from the start of `src`: more than `(rows - 1) * row_floats`, at most
    /// `rows * row_floats`.
    pub len: usize,
}

impl<'a> OperandTexture<'a> {
    /// The profiler's kernel name for the copy of an operand into its texture.
    pub const COPY_KERNEL: &'static str = "texture_copy";

    /// Floats per row of a flat operand texture (1024 texels; shaders index it with a shift).
    pub const FLAT_ROW_FLOATS: usize = 4096;

    /// `rows` rows of `row_floats` floats: texel (x, y) is row y's floats 4x..4x + 4.
    pub fn matrix(src: &'a GpuBuffer, row_floats: usize, rows: usize) -> Self {
        OperandTexture { src, row_floats, rows, len: rows * row_floats }
    }

    /// The first `len` elements of `src` wrapped at [`OperandTexture::FLAT_ROW_FLOATS`]. A
    /// texel holds four floats, so a `len` that is no multiple of 4 is rounded up to whole
    /// texels where the buffer's allocation holds them (pooled buffers are whole multiples of
    /// 64 bytes, so all but a buffer at the adapter's size limit); the floats past `len` are
    /// copied but never read. Otherwise the operand is not [`valid`](OperandTexture::valid).
    pub fn flat(src: &'a GpuBuffer, len: usize) -> Self {
        let len = Self::whole_texels(src, len);
        OperandTexture { src, row_floats: Self::FLAT_ROW_FLOATS, rows: len.div_ceil(Self::FLAT_ROW_FLOATS), len }
    }

    /// `len` rounded up to whole texels (4 floats) where `src`'s allocation holds them, else
    /// `len`: the most of `src` a flat operand texture copies for its first `len` elements.
    fn whole_texels(src: &GpuBuffer, len: usize) -> usize {
        let whole = len.next_multiple_of(4);
        if (whole as u64) * 4 <= src.capacity_bytes() {
            whole
        } else {
            len
        }
    }

    /// True when `rows` rows of `row_floats` floats can be an operand texture under `limits`.
    pub fn fits(row_floats: usize, rows: usize, limits: &wgpu::Limits) -> bool {
        let side = limits.max_texture_dimension_2d as usize;
        row_floats > 0 && row_floats.is_multiple_of(64) && row_floats / 4 <= side && rows > 0 && rows <= side
    }

    /// True when this operand can be copied into a texture under `limits`: its rows [`fits`],
    /// and `len` whole texels that fill every row but the last.
    ///
    /// [`fits`]: OperandTexture::fits
    pub fn valid(&self, limits: &wgpu::Limits) -> bool {
        let Self { row_floats, rows, len, .. } = *self;
        Self::fits(row_floats, rows, limits)
            && len.is_multiple_of(4)
            && len > (rows - 1) * row_floats
            && len <= rows * row_floats
    }
}

/// How one launch is timed (see [`Gpu::set_profiling`]).
enum DispatchTiming {
    /// Profiling is off.
    Off,
    /// Between the timestamp queries `query` and `query + 1`.
    Timestamps { query: u32 },
    /// By the host clock from `start`, the launch alone on the queue.
    WallClock { start: Instant, scopes: Vec<String> },
}

/// The launches' parameter blocks, packed into a few buffers that are reused after each submit.
struct ParamArena {
    blocks: Vec<wgpu::Buffer>,
    block: usize,
    offset: u64,
}

struct TimestampState {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    used: u32,
    /// Label and scopes of each dispatch whose timestamps are pending.
    pending: Vec<(KernelLabel, Vec<String>)>,
    /// First timestamp seen, in ns: the profile's zero.
    origin_ns: Option<f64>,
}

struct ProfilerState {
    timestamps: Option<TimestampState>,
    wall_origin: Instant,
    records: Vec<DispatchRecord>,
}

struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pending: usize,
    params: ParamArena,
    profiler: Option<ProfilerState>,
    scopes: Vec<String>,
    dispatches: u64,
    submits: u64,
}

struct GpuInner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: GpuInfo,
    pool: BufferPool,
    pipelines: PipelineCache,
    recorder: Mutex<Recorder>,
    error: Arc<Mutex<Option<Error>>>,
    /// The [`KernelPath`] launchers use, as an index into [`KernelPath::ALL`].
    kernel_path: AtomicUsize,
    /// Whether the matmul reads its operands from textures where it can ([`Gpu::texture_operands`]).
    texture_operands: AtomicBool,
    /// Scratch textures of [`Gpu::dispatch_with_operand_textures`] and what they hold.
    textures: Mutex<TextureCache>,
    /// A software adapter's worker threads ([`Gpu::worker_threads`]).
    workers: Mutex<Workers>,
}

/// A software adapter's worker threads as [`Gpu::worker_threads`] reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerThreads {
    /// Driver worker threads found: those that ran a short dispatch on every core (CPU adapters
    /// on Linux; 0 elsewhere).
    pub found: usize,
    /// The core each worker is pinned to, in the workers' order; empty when they are not pinned.
    pub cores: Vec<usize>,
    /// Why none were looked for or they are not pinned, where that is not the adapter's kind.
    pub note: Option<String>,
}

/// An operand texture and what was last copied into it: the source buffer's contents at the
/// copy and the elements copied. A launch that wants the same again skips the copy.
struct ScratchTexture {
    texture: wgpu::Texture,
    holds: Option<(Contents, usize)>,
    /// Whether the buffer it was copied from still holds those contents: once not, nothing can
    /// find this texture again.
    watch: Option<ContentsWatch>,
    /// The launch that last used it ([`TextureCache::launches`]).
    used: u64,
}

/// Scratch textures for operand copies, by size (width, height in texels), kept for the
/// context's life. An operand whose contents a texture of its size holds is not copied again,
/// whichever launch or slot copied it (the weights between a forward and its backward, an
/// activation read as A by one product and as B by another). Otherwise it is copied into a
/// texture of its size whose contents no buffer holds any more (dropped or written since: the
/// most recently used such, whose memory is likeliest still in the CPU's caches), else into a
/// new texture while the size has fewer than [`TEXTURES_PER_SIZE`] ([`SMALL_TEXTURES_PER_SIZE`]
/// for a size of one flat row or less) and all of them stay within
/// [`TEXTURE_BUDGET`] bytes, else into the one of its size used longest ago; never into one that
/// an earlier operand of the same launch took. Reusing the stale ones first keeps the cache
/// small and warm: a new texture's first copy also pays for faulting its pages in (on the
/// EPYC below, 0.6 ms instead of 0.1 for a 2 MiB copy).
#[derive(Default)]
struct TextureCache {
    by_size: HashMap<(u32, u32), Vec<ScratchTexture>>,
    /// The one-texel texture bound where a launch reads nothing.
    placeholder: Option<wgpu::Texture>,
    /// Bytes of all scratch textures.
    bytes: u64,
    /// Launches that asked for operand textures so far: each launch's number marks what it uses.
    launches: u64,
}

/// Most scratch textures of one size.
const TEXTURES_PER_SIZE: usize = 24;

/// Most scratch textures of one size for sizes of at most [`SMALL_TEXTURE_BYTES`]: a model's
/// vectors (layer norm weights and biases, 36 in the default model, each one 16 KiB row) all
/// stay in their textures between steps, where 24 would copy every one again each forward.
const SMALL_TEXTURES_PER_SIZE: usize = 256;

/// Largest texture counted as small ([`SMALL_TEXTURES_PER_SIZE`]): one row of a flat texture.
const SMALL_TEXTURE_BYTES: u64 = 16 * 1024;

/// Most bytes of scratch textures before copies reuse the oldest of a size rather than add one
/// (they live in system memory on the CPU adapters that use them). A default-config training
/// step at batch 8 copies 301 operands with 128 MiB, 353 with 64 MiB, 277 with 384 MiB (then
/// full) and copied 429 with one texture per operand slot and size (AMD EPYC family 25 model 1,
/// 2026-12-05, `vlsa profile model --batch 8 --backward`).
const TEXTURE_BUDGET: u64 = 128 << 20;

thread_local! {
    /// While [`Gpu::prepare_pipelines`] rehearses its closure on this thread: which GPU (its
    /// shared state's address) and the pipelines the rehearsal's launches asked for. Per thread,
    /// so that other threads using the same GPU meanwhile launch as usual.
    static REHEARSAL: RefCell<Option<(usize, Vec<PipelineRequest>)>> = const { RefCell::new(None) };
}

/// Ends a rehearsal on this thread, also when its closure panics.
struct RehearsalGuard;

impl Drop for RehearsalGuard {
    fn drop(&mut self) {
        REHEARSAL.with(|r| r.borrow_mut().take());
    }
}

/// What [`Gpu::prepare_pipelines`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreparedPipelines {
    /// Launches the rehearsal noted (it recorded none of them).
    pub launches: usize,
    /// Pipelines built now (the others the launches use were built before).
    pub built: usize,
}

/// A GPU device and everything vlsa keeps with it. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    };
    let backend = if info.backend == wgpu::Backend::Gl { 1 } else { 0 };
    (ty, backend)
}

/// wgpu's error reports span several indented lines ("Caused by: ..."); vlsa's errors are one
/// sentence, so the lines are joined with ": ".
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "Caused by:").collect::<Vec<_>>().join(": ")
}

/// The driver's worker threads of a CPU adapter just opened (kernels/src/cpu_threads.rs): the
/// threads started since `before` that run most of a dispatch that keeps every core busy,
/// pinned one per core. Whatever goes wrong leaves them as they are, with a note saying why.
fn find_workers(device: &wgpu::Device, queue: &wgpu::Queue, before: &std::collections::HashSet<i32>) -> Workers {
    let started: Vec<i32> = cpu_threads::tasks().difference(before).copied().collect();
    if started.is_empty() {
        return Workers::skipped("the driver started no threads that could be told apart");
    }
    // CPU times read after the untimed first dispatch (which compiles the kernel).
    let snapshot =
        || -> Vec<(i32, u64)> { started.iter().filter_map(|&t| Some((t, cpu_threads::cpu_ns(t)?))).collect() };
    let (cpu, wall) = match cpu_threads::run_busy(device, queue, std::time::Duration::from_millis(20), snapshot) {
        Ok(measured) => measured,
        Err(e) => return Workers::skipped(format!("the busy dispatch failed: {e}")),
    };
    let tids = cpu_threads::busy(&cpu, wall.as_nanos() as u64, 0.05);
    if tids.is_empty() {
        return Workers::skipped("no thread ran the busy dispatch for long enough");
    }
    let mut workers = Workers::new(tids);
    if let Err(e) = workers.pin(true) {
        workers.note = Some(format!("setting their cores failed: {e}"));
    }
    workers
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

const INSTALL_HINT: &str = "no Vulkan, Metal, DX12 or GL adapter was found; on Linux without a GPU install Mesa's software drivers (`apt-get install mesa-vulkan-drivers`), or install your GPU's driver";

impl Gpu {
    /// Opens the best adapter, honouring `VLSA_ADAPTER` and `WGPU_BACKEND`.
    pub fn new() -> Result<Gpu> {
        let wanted = std::env::var("VLSA_ADAPTER").ok().filter(|s| !s.is_empty());
        Gpu::with_adapter(wanted.as_deref())
    }

    /// Opens the first adapter whose name contains `name` (case-insensitive), or the best one.
    pub fn with_adapter(name: Option<&str>) -> Result<Gpu> {
        // The threads that exist before the driver starts its own (cpu_threads.rs).
        let threads_before = cpu_threads::tasks();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if adapters.is_empty() {
            return Err(Error::NoAdapter(INSTALL_HINT.into()));
        }
        adapters.sort_by_key(|a| rank(&a.get_info()));
        let all_adapters: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
        let adapter = match name {
            Some(n) => {
                let needle = n.to_lowercase();
                adapters.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&needle)).ok_or_else(|| {
                    Error::NoAdapter(format!(
                        "VLSA_ADAPTER={n} matches none of the adapters found: {}",
                        all_adapters.join("; ")
                    ))
                })?
            }
            None => adapters.into_iter().next().expect("checked non-empty"),
        };
        Gpu::from_adapter(adapter, all_adapters, &threads_before)
    }

    fn from_adapter(
        adapter: wgpu::Adapter,
        all_adapters: Vec<String>,
        threads_before: &std::collections::HashSet<i32>,
    ) -> Result<Gpu> {
        let ainfo = adapter.get_info();
        let limits = adapter.limits();
        let who = describe(&ainfo);
        if !adapter.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
            return Err(Error::Unsupported(format!("{who} cannot run compute shaders")));
        }
        for (what, have, need) in [
            ("max_storage_buffers_per_shader_stage", limits.max_storage_buffers_per_shader_stage, MIN_STORAGE_BUFFERS),
            ("max_compute_invocations_per_workgroup", limits.max_compute_invocations_per_workgroup, MIN_INVOCATIONS),
            ("max_compute_workgroup_storage_size", limits.max_compute_workgroup_storage_size, MIN_WORKGROUP_MEMORY),
        ] {
            if have < need {
                return Err(Error::Unsupported(format!("{who} has {what} = {have}, vlsa needs at least {need}")));
            }
        }
        let optional = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let features = adapter.features() & optional;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vlsa"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Unsupported(format!("{who} refused to open a device: {e}")))?;

        let error: Arc<Mutex<Option<Error>>> = Arc::default();
        let slot = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let err = match e {
                wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(one_line(&e.to_string())),
                other => Error::Validation(one_line(&other.to_string())),
            };
            lock(&slot).get_or_insert(err);
        }));
        let slot = error.clone();
        device.set_device_lost_callback(move |reason, message| {
            // The loss is the cause of whatever fails after it, so it replaces an earlier error;
            // it also fires when the device is dropped, when nobody reads it any more.
            let why = if reason == wgpu::DeviceLostReason::Destroyed {
                "the device was destroyed".to_string()
            } else {
                one_line(&format!("{reason:?}: {message}"))
            };
            *lock(&slot) = Some(Error::DeviceLost(why));
        });

        let info = GpuInfo {
            name: ainfo.name.clone(),
            backend: format!("{:?}", ainfo.backend),
            device_type: format!("{:?}", ainfo.device_type),
            driver: format!("{} {}", ainfo.driver, ainfo.driver_info).trim().to_string(),
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_size: (ainfo.subgroup_min_size, ainfo.subgroup_max_size),
            limits,
            all_adapters,
        };
        let path = match std::env::var("VLSA_KERNEL_PATH").ok().filter(|s| !s.trim().is_empty()) {
            None => KernelPath::default_for(&info.device_type, info.subgroups),
            Some(name) => KernelPath::parse(&name).ok_or_else(|| {
                let names: Vec<_> = KernelPath::ALL.iter().map(|p| p.name()).collect();
                Error::Unsupported(format!(
                    "VLSA_KERNEL_PATH={name} is not a kernel path; use one of {}",
                    names.join(", ")
                ))
            })?,
        };
        if path == KernelPath::Subgroup && !info.subgroups {
            return Err(Error::Unsupported(format!(
                "VLSA_KERNEL_PATH=subgroup, but {who} has no subgroup operations; use registers or tiled"
            )));
        }
        // Texture operands: on CPU adapters with subgroups (lavapipe) unless VLSA_TEXTURE_OPERANDS=0.
        let texture_slots = info.limits.max_storage_textures_per_shader_stage;
        let texture_operands = match std::env::var("VLSA_TEXTURE_OPERANDS").ok().filter(|s| !s.trim().is_empty()) {
            None => info.device_type == "Cpu" && info.subgroups && texture_slots >= OPERAND_TEXTURES_MAX,
            Some(v) if v.trim() == "1" && texture_slots < OPERAND_TEXTURES_MAX => {
                return Err(Error::Unsupported(format!(
                    "VLSA_TEXTURE_OPERANDS=1, but {who} allows {texture_slots} storage textures per shader stage and texture operands need {OPERAND_TEXTURES_MAX}"
                )));
            }
            Some(v) if v.trim() == "1" => true,
            Some(v) if v.trim() == "0" => false,
            Some(v) => {
                return Err(Error::Unsupported(format!("VLSA_TEXTURE_OPERANDS={v}: use 1 (on) or 0 (off)")));
            }
        };
        // Worker threads: looked for and pinned on CPU adapters unless VLSA_PIN_THREADS=0.
        let pin_threads = match std::env::var("VLSA_PIN_THREADS").ok().filter(|s| !s.trim().is_empty()) {
            None => true,
            Some(v) if v.trim() == "1" => true,
            Some(v) if v.trim() == "0" => false,
            Some(v) => return Err(Error::Unsupported(format!("VLSA_PIN_THREADS={v}: use 1 (on) or 0 (off)"))),
        };
        let workers = if info.device_type != "Cpu" {
            Workers::default()
        } else if !pin_threads {
            Workers::skipped("VLSA_PIN_THREADS=0")
        } else {
            find_workers(&device, &queue, threads_before)
        };
        let recorder = Recorder {
            encoder: None,
            pending: 0,
            params: ParamArena { blocks: Vec::new(), block: 0, offset: 0 },
            profiler: None,
            scopes: Vec::new(),
            dispatches: 0,
            submits: 0,
        };
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                info,
                pool: BufferPool::default(),
                pipelines: PipelineCache::default(),
                recorder: Mutex::new(recorder),
                error,
                kernel_path: AtomicUsize::new(KernelPath::ALL.iter().position(|&p| p == path).unwrap_or(0)),
                texture_operands: AtomicBool::new(texture_operands),
                textures: Mutex::default(),
                workers: Mutex::new(workers),
            }),
        })
    }

    /// A software adapter's worker threads (lavapipe's, llvmpipe's): how many were found and
    /// the cores they are pinned to (kernels/src/cpu_threads.rs explains why). Found and pinned
    /// when the context is created, on CPU adapters on Linux, unless `VLSA_PIN_THREADS=0`.
    pub fn worker_threads(&self) -> WorkerThreads {
        let w = lock(&self.inner.workers);
        let cores = if w.pinned { (0..w.tids.len()).filter_map(|i| w.core_of(i)).collect() } else { Vec::new() };
        WorkerThreads { found: w.tids.len(), cores, note: w.note.clone() }
    }

    /// Pins each worker thread found to its own core, or (`on` false) lets them run on any
    /// core this process may use again; for benches comparing the two. An error where none
    /// were found or the system refuses.
    pub fn pin_worker_threads(&self, on: bool) -> Result<()> {
        let mut w = lock(&self.inner.workers);
        if w.tids.is_empty() {
            return Err(Error::Unsupported(format!("no worker threads of {} were found to pin", self.inner.info.name)));
        }
        w.pin(on).map_err(|e| Error::Unsupported(format!("setting the worker threads' cores: {e}")))
    }

    /// Facts about the adapter.
    pub fn info(&self) -> &GpuInfo {
        &self.inner.info
    }

    /// The kernel path launchers use (see [`crate::path`]).
    pub fn kernel_path(&self) -> KernelPath {
        KernelPath::ALL[self.inner.kernel_path.load(Ordering::Relaxed)]
    }

    /// The kernel paths this adapter can run: all but [`KernelPath::Subgroup`] without subgroups.
    pub fn kernel_paths(&self) -> Vec<KernelPath> {
        KernelPath::ALL.into_iter().filter(|&p| p != KernelPath::Subgroup || self.inner.info.subgroups).collect()
    }

    /// Makes every later launch on this context (and its clones) use `path`; for tests, benches
    /// and `vlsa profile`. Refuses a path the adapter cannot run.
    pub fn set_kernel_path(&self, path: KernelPath) -> Result<()> {
        if !self.kernel_paths().contains(&path) {
            return Err(Error::Unsupported(format!(
                "kernel path {path} needs subgroup operations, which {} lacks",
                self.inner.info.name
            )));
        }
        let index = KernelPath::ALL.iter().position(|&p| p == path).unwrap_or(0);
        self.inner.kernel_path.store(index, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the matmul's subgroup kernels read their operands from textures where the shape
    /// allows ([`crate::matmul::plan`]): on by default on CPU adapters with
    /// subgroups (lavapipe, where a texel load is a gather and a per-lane storage load is not),
    /// off elsewhere; `VLSA_TEXTURE_OPERANDS=0|1` when the context is created, or
    /// [`Gpu::set_texture_operands`].
    pub fn texture_operands(&self) -> bool {
        self.inner.texture_operands.load(Ordering::Relaxed)
    }

    /// The scratch textures this context holds for operand copies: how many, and their bytes
    /// (at most [`TEXTURES_PER_SIZE`] per size; past 128 MiB a copy reuses the oldest of its
    /// size instead of adding one).
    pub fn operand_texture_memory(&self) -> (usize, u64) {
        let cache = lock(&self.inner.textures);
        (cache.by_size.values().map(Vec::len).sum(), cache.bytes)
    }

    /// Turns texture operands on or off (for tests and benches: both give the same products).
    /// An adapter with fewer than [`OPERAND_TEXTURES_MAX`] storage textures per shader stage
    /// then fails at the first launch that binds more.
    pub fn set_texture_operands(&self, on: bool) {
        self.inner.texture_operands.store(on, Ordering::Relaxed);
    }

    /// A view of scratch texture `slot` (rgba32float, `row_floats / 4` texels wide, `rows`
    /// high) holding the first `len` elements of the operand's buffer, the copy
    /// recorded on `r`'s encoder. The texture is kept, until the context is dropped, for the
    /// next launch that asks for the same slot and size.
    fn operand_texture(
        &self,
        r: &mut Recorder,
        launch: u64,
        operand: &OperandTexture<'_>,
    ) -> Result<wgpu::TextureView> {
        let OperandTexture { src, row_floats, rows, len } = *operand;
        if !operand.valid(self.limits()) {
            let side = self.limits().max_texture_dimension_2d;
            return Err(Error::Shape(format!(
                "an operand texture of {len} elements in {rows} rows of {row_floats} floats: rows must be a positive multiple of 64 floats, both sides within {side} texels, and only the last row partial (whole texels)"
            )));
        }
        // The data and, as OperandTexture::flat copies it, the rest of its last texel.
        if len > OperandTexture::whole_texels(src, src.len()) {
            return Err(Error::Shape(format!(
                "an operand texture of {len} elements from a buffer of {} elements",
                src.len()
            )));
        }
        let size = wgpu::Extent3d { width: (row_floats / 4) as u32, height: rows as u32, depth_or_array_layers: 1 };
        // The copy is skipped when the texture already holds these elements of the buffer as it
        // is now: no write into the buffer has been recorded since the copy that filled it (the
        // weights between a forward and its backward, an input that several products read).
        let wanted = (src.contents(), len);
        let mut cache = lock(&self.inner.textures);
        let TextureCache { by_size, bytes, .. } = &mut *cache;
        let same_size = by_size.entry((size.width, size.height)).or_default();
        if let Some(hit) = same_size.iter_mut().find(|t| t.holds == Some(wanted)) {
            hit.used = launch;
            return Ok(hit.texture.create_view(&Default::default()));
        }
        let texture_bytes = 16 * u64::from(size.width) * u64::from(size.height);
        let free = |t: &&ScratchTexture| t.used != launch;
        let stale = same_size
            .iter()
            .enumerate()
            .filter(|(_, t)| free(t) && !t.watch.as_ref().is_some_and(ContentsWatch::current))
            .max_by_key(|(_, t)| t.used);
        let oldest = same_size.iter().enumerate().filter(|(_, t)| free(t)).min_by_key(|(_, t)| t.used);
        let most = if texture_bytes <= SMALL_TEXTURE_BYTES { SMALL_TEXTURES_PER_SIZE } else { TEXTURES_PER_SIZE };
        let room = same_size.len() < most && *bytes + texture_bytes <= TEXTURE_BUDGET;
        let index = match (stale, oldest) {
            (Some((i, _)), _) => i,
            (None, Some((i, _))) if !room => i,
            _ => {
                same_size.push(ScratchTexture {
                    texture: self.rgba32_texture("vlsa operand texture", size),
                    holds: None,
                    watch: None,
                    used: launch,
                });
                *bytes += texture_bytes;
                same_size.len() - 1
            }
        };
        let target = &mut same_size[index];
        // It holds nothing it can be trusted for until the copy below is recorded.
        target.holds = None;
        target.watch = None;
        target.used = launch;
        let texture = target.texture.clone();
        drop(cache);
        // Profiled like a launch (`texture_copy`): with timestamps, between an empty
        // pass that writes the start and one that writes the end.
        let label = KernelLabel {
            kernel: OperandTexture::COPY_KERNEL,
            shape: format!("{rows} x {row_floats}"),
            flops: 0,
            bytes: 8 * len as u64,
        };
        let timing = self.begin_timing(r, &label)?;
        let query = match &timing {
            DispatchTiming::Timestamps { query } => Some(*query),
            _ => None,
        };
        let Recorder { encoder, profiler, .. } = &mut *r;
        let enc = encoder.get_or_insert_with(|| self.device().create_command_encoder(&Default::default()));
        let queries = profiler.as_ref().and_then(|p| p.timestamps.as_ref()).map(|ts| &ts.queries);
        let mark =
            |enc: &mut wgpu::CommandEncoder, begin: Option<u32>, end: Option<u32>| {
                if let (Some(query_set), Some(_)) = (queries, query) {
                    let timestamp_writes = Some(wgpu::ComputePassTimestampWrites {
                        query_set,
                        beginning_of_pass_write_index: begin,
                        end_of_pass_write_index: end,
                    });
                    drop(enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(label.kernel),
                        timestamp_writes,
                    }));
                }
            };
        mark(enc, query, None);
        // The whole rows in one copy, a partial last row in a second.
        let whole = (len / row_floats) as u32;
        let tail = (len % row_floats / 4) as u32;
        let layout = |offset: u64| wgpu::TexelCopyBufferLayout {
            offset,
            bytes_per_row: Some(row_floats as u32 * 4),
            rows_per_image: None,
        };
        if whole > 0 {
            enc.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo { buffer: src.raw(), layout: layout(0) },
                texture.as_image_copy(),
                wgpu::Extent3d { height: whole, ..size },
            );
        }
        if tail > 0 {
            enc.copy_buffer_to_texture(
                wgpu::TexelCopyBufferInfo { buffer: src.raw(), layout: layout(4 * (whole as u64) * row_floats as u64) },
                wgpu::TexelCopyTextureInfo {
                    texture: &texture,
                    mip_level: 0,
                    origin: wgpu::Origin3d { x: 0, y: whole, z: 0 },
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::Extent3d { width: tail, height: 1, depth_or_array_layers: 1 },
            );
        }
        mark(enc, None, query.map(|q| q + 1));
        // The same texture, unless another launch took it meanwhile (it is recorded under the
        // recorder's lock, which this launch holds, so none can).
        if let Some(scratch) = lock(&self.inner.textures)
            .by_size
            .get_mut(&(size.width, size.height))
            .and_then(|v| v.iter_mut().find(|t| t.texture == texture))
        {
            scratch.holds = Some(wanted);
            scratch.watch = Some(src.watch());
        }
        self.end_timing(r, timing, label)?;
        Ok(texture.create_view(&Default::default()))
    }

    /// An rgba32float texture that shaders read with `textureLoad` (as a read-only storage
    /// texture) and copies fill.
    fn rgba32_texture(&self, label: &'static str, size: wgpu::Extent3d) -> wgpu::Texture {
        self.device().create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba32Float,
            usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        })
    }

    /// A one-texel texture for a texture binding that a launch never reads (created once).
    fn placeholder_texture(&self) -> wgpu::TextureView {
        let size = wgpu::Extent3d { width: 1, height: 1, depth_or_array_layers: 1 };
        lock(&self.inner.textures)
            .placeholder
            .get_or_insert_with(|| {
                let texture = self.rgba32_texture("vlsa placeholder texture", size);
                // Written once here. Left uninitialized (and without COPY_DST), it put lavapipe's
                // timestamps out of step: a profiled training step showed every kernel but the
                // matmul near zero and the time in the gaps between launches.
                self.inner.queue.write_texture(
                    texture.as_image_copy(),
                    &[0u8; 16],
                    wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(16), rows_per_image: None },
                    size,
                );
                texture
            })
            .create_view(&Default::default())
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The device's limits.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.info.limits
    }

    /// Counters of the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }

    /// The buffer pool (to release free buffers, or inspect it).
    pub fn pool(&self) -> &BufferPool {
        &self.inner.pool
    }

    /// Dispatches recorded and submits made since the device was opened.
    pub fn counters(&self) -> (u64, u64) {
        let r = lock(&self.inner.recorder);
        (r.dispatches, r.submits)
    }

    /// Returns the first asynchronous GPU error since the last check, if any.
    pub fn check_errors(&self) -> Result<()> {
        // A non-blocking poll runs a pending device-lost callback first, so a loss is reported
        // as the loss rather than as the validation error it caused.
        let _ = self.device().poll(wgpu::PollType::Poll);
        let mut slot = lock(&self.inner.error);
        match slot.take() {
            // A lost device stays lost: every later call reports it again.
            Some(e @ Error::DeviceLost(_)) => {
                *slot = Some(e.clone());
                Err(e)
            }
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ----- buffers -----

    /// A buffer of `len` 4-byte elements with unspecified contents.
    pub fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        let bytes = (len as u64).saturating_mul(4);
        let max = self.limits().max_buffer_size;
        if bytes > max {
            return Err(Error::Limit {
                what: format!("a buffer of {len} elements (max_buffer_size, in bytes)"),
                needed: bytes,
                limit: max,
            });
        }
        if let Some((buffer, class)) = self.inner.pool.take(bytes) {
            return Ok(GpuBuffer::new(buffer, class, len, self.inner.pool.clone()));
        }
        let class = size_class(bytes).min(max.max(bytes.div_ceil(4) * 4));
        let scope = self.device().push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: class,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            // Free cached buffers and tell the caller; the allocation itself is not retried.
            self.inner.pool.release_free();
            return Err(Error::OutOfMemory(one_line(&format!("allocating {class} bytes: {e}"))));
        }
        self.inner.pool.record_new(class);
        Ok(GpuBuffer::new(buffer, class, len, self.inner.pool.clone()))
    }

    /// A buffer of `len` zeros (cleared on the GPU, in queue order).
    pub fn zeros(&self, len: usize) -> Result<GpuBuffer> {
        let b = self.alloc(len)?;
        self.clear(&b)?;
        Ok(b)
    }

    /// Sets every element of `buffer` to zero, in queue order.
    pub fn clear(&self, buffer: &GpuBuffer) -> Result<()> {
        if self.rehearsing() {
            return Ok(());
        }
        let mut r = lock(&self.inner.recorder);
        let enc = self.encoder(&mut r);
        enc.clear_buffer(buffer.raw(), 0, Some(buffer.byte_len().div_ceil(4) * 4).filter(|&s| s > 0));
        buffer.note_write();
        Ok(())
    }

    /// Copies `src` into the first elements of `dst`, in queue order.
    pub fn copy(&self, src: &GpuBuffer, dst: &GpuBuffer) -> Result<()> {
        if src.len() > dst.len() {
            return Err(Error::Shape(format!("copy of {} elements into a buffer of {}", src.len(), dst.len())));
        }
        if src.is_empty() || self.rehearsing() {
            return Ok(());
        }
        let mut r = lock(&self.inner.recorder);
        let enc = self.encoder(&mut r);
        enc.copy_buffer_to_buffer(src.raw(), 0, dst.raw(), 0, src.byte_len());
        if src.len() == dst.len() {
            dst.note_copy_of(src);
        } else {
            dst.note_write();
        }
        Ok(())
    }

    /// Copies `len` elements from `src[src_offset..]` to `dst[dst_offset..]`, in queue order.
    pub fn copy_region(
        &self,
        src: &GpuBuffer,
        src_offset: usize,
        dst: &GpuBuffer,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        if src_offset + len > src.len() || dst_offset + len > dst.len() {
            return Err(Error::Shape(format!(
                "copying {len} elements from offset {src_offset} of a buffer of {} to offset {dst_offset} of a buffer of {}",
                src.len(),
                dst.len()
            )));
        }
        if len == 0 || self.rehearsing() {
            return Ok(());
        }
        let mut r = lock(&self.inner.recorder);
        let enc = self.encoder(&mut r);
        enc.copy_buffer_to_buffer(src.raw(), src_offset as u64 * 4, dst.raw(), dst_offset as u64 * 4, len as u64 * 4);
        if src_offset == 0 && dst_offset == 0 && len == src.len() && len == dst.len() {
            dst.note_copy_of(src);
        } else {
            dst.note_write();
        }
        Ok(())
    }

    /// Uploads 4-byte plain values (f32, u32, i32) into a new buffer.
    pub fn upload<T: bytemuck::Pod>(&self, data: &[T]) -> Result<GpuBuffer> {
        assert_eq!(std::mem::size_of::<T>(), 4, "vlsa buffers hold 4-byte elements");
        let b = self.alloc(data.len())?;
        self.write(&b, data)?;
        Ok(b)
    }

    /// Overwrites the first elements of `buffer` with `data`.
    pub fn write<T: bytemuck::Pod>(&self, buffer: &GpuBuffer, data: &[T]) -> Result<()> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() as u64 > buffer.capacity_bytes() {
            return Err(Error::Shape(format!("writing {} bytes into a buffer of {}", bytes.len(), buffer.byte_len())));
        }
        if bytes.is_empty() || self.rehearsing() {
            return Ok(());
        }
        // A queue write lands before every command of the next submit; a recycled buffer may
        // still be used by commands already recorded (dispatches, clears, copies), so those go first.
        {
            let mut r = lock(&self.inner.recorder);
            if r.encoder.is_some() {
                self.submit(&mut r)?;
            }
            buffer.note_write();
        }
        self.inner.queue.write_buffer(buffer.raw(), 0, bytes);
        Ok(())
    }

    /// Reads a buffer back as f32 values (submits pending work and waits for it).
    pub fn download(&self, buffer: &GpuBuffer) -> Result<Vec<f32>> {
        self.download_pod(buffer)
    }

    /// Reads a buffer back as any 4-byte plain type.
    pub fn download_pod<T: bytemuck::Pod>(&self, buffer: &GpuBuffer) -> Result<Vec<T>> {
        if self.rehearsing() {
            return Err(Error::Readback(
                "a readback inside Gpu::prepare_pipelines: the rehearsal runs nothing, so there is nothing to read"
                    .into(),
            ));
        }
        let bytes = buffer.byte_len();
        if bytes == 0 {
            self.sync()?;
            return Ok(Vec::new());
        }
        let staging = self.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("vlsa readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut r = lock(&self.inner.recorder);
            let enc = self.encoder(&mut r);
            enc.copy_buffer_to_buffer(buffer.raw(), 0, &staging, 0, bytes);
            self.submit(&mut r)?;
        }
        let out = self.map_read(&staging, bytes)?;
        staging.destroy();
        Ok(out)
    }

    fn map_read<T: bytemuck::Pod>(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..bytes, move |res| {
            let _ = tx.send(res);
        });
        // The map callback runs inside whichever thread polls the device next; when several
        // threads share the device it may fire in another thread's poll, so poll until it has.
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            self.wait()?;
            match rx.recv_timeout(std::time::Duration::from_millis(5)) {
                Ok(Ok(())) => break,
                Ok(Err(e)) => return Err(Error::Readback(one_line(&e.to_string()))),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => continue,
                Err(_) => {
                    return Err(Error::Readback("the GPU did not finish copying the data back within 120 s".into()))
                }
            }
        }
        let out = {
            let view = staging.get_mapped_range(0..bytes).map_err(|e| Error::Readback(one_line(&e.to_string())))?;
            bytemuck::pod_collect_to_vec(&view[..])
        };
        staging.unmap();
        Ok(out)
    }

    // ----- pipelines -----

    /// Builds, before they are needed, the pipelines that `record` would launch, several at
    /// once. `record` runs once as a rehearsal on this thread: its launches, clears, copies and
    /// writes record nothing (buffers are still allocated) and a readback inside it is an error;
    /// every pipeline its launches ask for is noted. Then the ones not built yet are built, on
    /// as many threads as the CPU has (one on the GL backend, whose context serialises them),
    /// and later launches find them ready. Creating a pipeline is where a driver compiles its
    /// shader, on the calling thread: on lavapipe 0.2-0.7 s for each large matmul pipeline, most
    /// of what `vlsa segment` of one image takes. Other threads may use this GPU meanwhile.
    /// `record` may return any error type that a GPU [`Error`] converts into (an application's
    /// own error), and its error is returned as it is.
    pub fn prepare_pipelines<T, E: From<Error>>(
        &self,
        record: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<PreparedPipelines, E> {
        if self.rehearsing() {
            return Err(Error::Shape("Gpu::prepare_pipelines called inside its own rehearsal".into()).into());
        }
        let requests = {
            let _guard = RehearsalGuard;
            REHEARSAL.with(|r| *r.borrow_mut() = Some((self.id(), Vec::new())));
            record()?;
            REHEARSAL.with(|r| r.borrow_mut().take()).map(|(_, requests)| requests).unwrap_or_default()
        };
        let threads = if self.inner.info.backend == "Gl" {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let built = self.inner.pipelines.prepare(self.device(), &requests, threads)?;
        Ok(PreparedPipelines { launches: requests.len(), built })
    }

    /// How many compute pipelines this GPU has built so far (each once per process).
    pub fn pipelines_built(&self) -> usize {
        self.inner.pipelines.len()
    }

    /// This GPU's identity for the rehearsal's thread-local state.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    /// Whether this thread is rehearsing for this GPU ([`Gpu::prepare_pipelines`]).
    fn rehearsing(&self) -> bool {
        REHEARSAL.with(|r| r.borrow().as_ref().is_some_and(|(id, _)| *id == self.id()))
    }

    // ----- dispatch -----
    //
    // A launch goes through four steps, each in one place: `check_dispatch` (the adapter's
    // limits), `bind` (parameter block and storage buffers into a bind group), `record_pass`
    // (the compute pass, with the profiler's `begin_timing`/`end_timing` around it) and
    // `submit_policy` (when the open encoder goes to the queue).

    /// Records one kernel launch (submitted later, in order).
    pub fn dispatch(&self, d: Dispatch<'_>) -> Result<()> {
        self.dispatch_specialized(d, &[])
    }

    /// [`Gpu::dispatch`] of the entry point compiled with its pipeline-overridable constants
    /// (`override` in WGSL) set to `constants`: one pipeline per distinct set, built once. For
    /// values that only select a size, so one entry point serves every size.
    pub fn dispatch_specialized(&self, d: Dispatch<'_>, constants: Constants<'_>) -> Result<()> {
        self.dispatch_with_operand_textures(d, constants, &[])
    }

    /// [`Gpu::dispatch_specialized`] of an entry point that also reads textures: each of
    /// `operands` is copied into a scratch texture (see [`OperandTexture`]) and bound to the
    /// entry point's texture bindings in binding order. The copies and the launch are recorded
    /// under one lock, so another thread's launch cannot reuse a scratch texture in between.
    ///
    /// A `None` operand stands for a texture binding the entry point declares but this launch
    /// never reads (a branch on its parameters skips it): a one-texel placeholder is bound and
    /// nothing is copied.
    pub fn dispatch_with_operand_textures(
        &self,
        d: Dispatch<'_>,
        constants: Constants<'_>,
        operands: &[Option<OperandTexture<'_>>],
    ) -> Result<()> {
        if !self.check_dispatch(&d)? {
            return Ok(());
        }
        if self.rehearsing() {
            let request = PipelineRequest { shader: d.shader, entry: d.entry, constants: constants.to_vec() };
            REHEARSAL.with(|r| r.borrow_mut().as_mut().map(|(_, requests)| requests.push(request)));
            return Ok(());
        }
        let kernel = self.inner.pipelines.get(self.device(), d.shader, d.entry, constants)?;
        let mut r = lock(&self.inner.recorder);
        let mut views = Vec::with_capacity(operands.len());
        let launch = {
            let mut cache = lock(&self.inner.textures);
            cache.launches += 1;
            cache.launches
        };
        for operand in operands {
            views.push(match operand {
                Some(operand) => self.operand_texture(&mut r, launch, operand)?,
                None => self.placeholder_texture(),
            });
        }
        let textures: Vec<&wgpu::TextureView> = views.iter().collect();
        let bind_group = self.bind(&mut r, &kernel, &d, &textures)?;
        let timing = self.begin_timing(&mut r, &d.label)?;
        self.record_pass(&mut r, &kernel, &bind_group, &d, &timing);
        for &(binding, kind) in &kernel.bindings {
            if kind == BindingKind::StorageReadWrite {
                if let Some(b) = d.buffers.get(binding as usize - 1) {
                    b.note_write();
                }
            }
        }
        r.pending += 1;
        r.dispatches += 1;
        self.end_timing(&mut r, timing, d.label)?;
        self.submit_policy(&mut r)
    }

    /// Flat operand textures ([`OperandTexture::flat`]) of the first `len` elements of each
    /// buffer, when texture operands are on ([`Gpu::texture_operands`]) and every one fits the
    /// adapter's textures; `None` otherwise (the launch then reads storage).
    pub fn flat_operands<'a>(&self, buffers: &[(&'a GpuBuffer, usize)]) -> Option<Vec<OperandTexture<'a>>> {
        if !self.texture_operands() {
            return None;
        }
        let operands: Vec<_> = buffers.iter().map(|&(buf, len)| OperandTexture::flat(buf, len)).collect();
        operands.iter().all(|o| o.valid(self.limits())).then_some(operands)
    }

    /// Launches `d`; or, with `textures` (from [`Gpu::flat_operands`]), the entry point of the
    /// same name in `texture_shader`, the module that fetches those operands from textures.
    pub fn dispatch_textured(
        &self,
        d: Dispatch<'_>,
        constants: Constants<'_>,
        texture_shader: &'static Shader,
        textures: Option<&[OperandTexture<'_>]>,
    ) -> Result<()> {
        match textures {
            Some(operands) => {
                let operands: Vec<_> = operands.iter().copied().map(Some).collect();
                self.dispatch_with_operand_textures(Dispatch { shader: texture_shader, ..d }, constants, &operands)
            }
            None => self.dispatch_specialized(d, constants),
        }
    }

    /// Checks a launch against the adapter's limits; `Ok(false)` when it has nothing to run
    /// (a zero-sized grid).
    fn check_dispatch(&self, d: &Dispatch<'_>) -> Result<bool> {
        let limits = self.limits();
        let max_wg = limits.max_compute_workgroups_per_dimension;
        for (axis, &n) in ["x", "y", "z"].iter().zip(&d.workgroups) {
            if n > max_wg {
                let what = format!(
                    "kernel `{}` of {} with {n} workgroups along {axis} (max_compute_workgroups_per_dimension)",
                    d.entry, d.shader.file
                );
                return Err(Error::Limit { what, needed: n as u64, limit: max_wg as u64 });
            }
        }
        if d.workgroups.contains(&0) {
            return Ok(false);
        }
        let max_bind = limits.max_storage_buffer_binding_size;
        for (i, b) in d.buffers.iter().enumerate() {
            if b.byte_len() > max_bind {
                let what = format!(
                    "kernel `{}` of {} binding {} ({} elements; max_storage_buffer_binding_size, in bytes)",
                    d.entry,
                    d.shader.file,
                    i + 1,
                    b.len()
                );
                return Err(Error::Limit { what, needed: b.byte_len(), limit: max_bind });
            }
        }
        Ok(true)
    }

    /// The bind group of a launch: its parameter block (copied into the parameter arena) at
    /// binding 0 and its storage buffers at the bindings the kernel uses.
    fn bind(
        &self,
        r: &mut Recorder,
        kernel: &Kernel,
        d: &Dispatch<'_>,
        textures: &[&wgpu::TextureView],
    ) -> Result<wgpu::BindGroup> {
        let block = if d.params.is_empty() { None } else { Some(self.push_params(r, d.params)?) };
        let mut entries = Vec::with_capacity(kernel.bindings.len());
        let mut next_texture = textures.iter();
        for &(binding, kind) in &kernel.bindings {
            let resource = match kind {
                BindingKind::Texture | BindingKind::StorageTexture => {
                    let view = next_texture.next().ok_or_else(|| {
                        Error::Shape(format!(
                            "{} reads {} textures or more but was given {}",
                            d.entry,
                            textures.len() + 1,
                            textures.len()
                        ))
                    })?;
                    wgpu::BindingResource::TextureView(view)
                }
                BindingKind::Uniform | BindingKind::StorageParams => {
                    let (block, offset, size) =
                        block.ok_or_else(|| Error::Shape(format!("{} needs a parameter block", d.entry)))?;
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &r.params.blocks[block],
                        offset,
                        size: std::num::NonZeroU64::new(size),
                    })
                }
                _ => {
                    let b = d.buffers.get(binding as usize - 1).ok_or_else(|| {
                        Error::Shape(format!(
                            "{} uses binding {binding} but only {} buffers were given",
                            d.entry,
                            d.buffers.len()
                        ))
                    })?;
                    b.binding()
                }
            };
            entries.push(wgpu::BindGroupEntry { binding, resource });
        }
        Ok(self.device().create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(d.entry),
            layout: &kernel.layout,
            entries: &entries,
        }))
    }

    /// Records the compute pass of one launch, with timestamp writes when `timing` asks.
    fn record_pass(
        &self,
        r: &mut Recorder,
        kernel: &Kernel,
        bind_group: &wgpu::BindGroup,
        d: &Dispatch<'_>,
        timing: &DispatchTiming,
    ) {
        let Recorder { encoder, profiler, .. } = r;
        let enc = encoder.get_or_insert_with(|| self.device().create_command_encoder(&Default::default()));
        let timestamp_writes = match timing {
            DispatchTiming::Timestamps { query } => {
                profiler.as_ref().and_then(|p| p.timestamps.as_ref()).map(|ts| wgpu::ComputePassTimestampWrites {
                    query_set: &ts.queries,
                    beginning_of_pass_write_index: Some(*query),
                    end_of_pass_write_index: Some(query + 1),
                })
            }
            _ => None,
        };
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(d.entry), timestamp_writes });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
    }

    /// The profiler's side of a launch, before it is recorded: reserves two timestamp queries,
    /// or (without timestamps) drains the queue so the host clock can time the launch alone.
    fn begin_timing(&self, r: &mut Recorder, label: &KernelLabel) -> Result<DispatchTiming> {
        let Some(p) = r.profiler.as_mut() else { return Ok(DispatchTiming::Off) };
        let scopes = r.scopes.clone();
        if let Some(ts) = p.timestamps.as_mut() {
            let query = ts.used;
            ts.used += 2;
            ts.pending.push((label.clone(), scopes));
            return Ok(DispatchTiming::Timestamps { query });
        }
        self.submit(r)?;
        self.wait()?;
        Ok(DispatchTiming::WallClock { start: Instant::now(), scopes })
    }

    /// The profiler's side of a launch, after it is recorded: a wall-clock launch is submitted
    /// and waited for, and its time recorded; timestamps are read when the encoder is submitted.
    fn end_timing(&self, r: &mut Recorder, timing: DispatchTiming, label: KernelLabel) -> Result<()> {
        match timing {
            DispatchTiming::Off => Ok(()),
            DispatchTiming::Timestamps { query } => {
                if query + 2 >= QUERY_CAPACITY {
                    self.submit(r)?;
                }
                Ok(())
            }
            DispatchTiming::WallClock { start, scopes } => {
                // The launch ran alone (earlier work was waited for before it was recorded),
                // so the host clock around its submit-and-wait is its time.
                self.submit(r)?;
                self.wait()?;
                let elapsed = start.elapsed().as_nanos() as f64;
                let p = r.profiler.as_mut().expect("profiling on");
                let start_ns = p.wall_origin.elapsed().as_nanos() as f64 - elapsed;
                p.records.push(DispatchRecord { label, scopes, start_ns, duration_ns: elapsed });
                Ok(())
            }
        }
    }

    /// When recorded launches go to the queue, besides flush, sync and readbacks: every
    /// [`SUBMIT_EVERY`] launches, so the GPU starts on the first part of a long sequence (a
    /// training step) while the host records the rest, and no command buffer grows unbounded.
    fn submit_policy(&self, r: &mut Recorder) -> Result<()> {
        if r.pending >= SUBMIT_EVERY {
            self.submit(r)?;
        }
        Ok(())
    }

    fn push_params(&self, r: &mut Recorder, params: &[u8]) -> Result<(usize, u64, u64)> {
        let limits = self.limits();
        let align = limits.min_uniform_buffer_offset_alignment.max(limits.min_storage_buffer_offset_alignment) as u64;
        let size = (params.len() as u64).div_ceil(16) * 16;
        if size > PARAM_BLOCK {
            return Err(Error::Limit { what: "a kernel parameter block".into(), needed: size, limit: PARAM_BLOCK });
        }
        let a = &mut r.params;
        if a.offset + size > PARAM_BLOCK {
            a.block += 1;
            a.offset = 0;
        }
        if a.block == a.blocks.len() {
            a.blocks.push(self.device().create_buffer(&wgpu::BufferDescriptor {
                label: Some("vlsa parameter blocks"),
                size: PARAM_BLOCK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let (block, offset) = (a.block, a.offset);
        let mut padded = params.to_vec();
        padded.resize(size as usize, 0);
        self.inner.queue.write_buffer(&a.blocks[block], offset, &padded);
        a.offset = (offset + size).div_ceil(align) * align;
        Ok((block, offset, size))
    }

    fn encoder<'r>(&self, r: &'r mut Recorder) -> &'r mut wgpu::CommandEncoder {
        r.encoder.get_or_insert_with(|| self.device().create_command_encoder(&Default::default()))
    }

    /// Submits the open encoder (and, when profiling, resolves its timestamps).
    fn submit(&self, r: &mut Recorder) -> Result<()> {
        let Some(mut enc) = r.encoder.take() else { return Ok(()) };
        let mut timestamps = None;
        if let Some(ts) = r.profiler.as_mut().and_then(|p| p.timestamps.as_mut()) {
            if ts.used > 0 {
                enc.resolve_query_set(&ts.queries, 0..ts.used, &ts.resolve, 0);
                enc.copy_buffer_to_buffer(&ts.resolve, 0, &ts.readback, 0, ts.used as u64 * 8);
                timestamps = Some((ts.used, std::mem::take(&mut ts.pending)));
                ts.used = 0;
            }
        }
        self.inner.queue.submit([enc.finish()]);
        r.pending = 0;
        r.submits += 1;
        // Parameter blocks may be rewritten now: later writes land after this submit's commands.
        r.params.block = 0;
        r.params.offset = 0;
        if let Some((used, labels)) = timestamps {
            let period = self.inner.queue.get_timestamp_period() as f64;
            let readback = &r.profiler.as_ref().and_then(|p| p.timestamps.as_ref()).expect("profiling").readback;
            let ticks: Vec<u64> = {
                let raw: Vec<u32> = self.map_read(readback, used as u64 * 8)?;
                raw.chunks(2).map(|c| c[0] as u64 | ((c[1] as u64) << 32)).collect()
            };
            let p = r.profiler.as_mut().expect("profiling");
            let ts = p.timestamps.as_mut().expect("profiling");
            for (i, (label, scopes)) in labels.into_iter().enumerate() {
                let (t0, t1) = (ticks[2 * i] as f64 * period, ticks[2 * i + 1] as f64 * period);
                let origin = *ts.origin_ns.get_or_insert(t0);
                p.records.push(DispatchRecord {
                    label,
                    scopes,
                    start_ns: t0 - origin,
                    duration_ns: (t1 - t0).max(0.0),
                });
            }
        }
        self.check_errors()
    }

    fn wait(&self) -> Result<()> {
        self.device().poll(wgpu::PollType::Wait { submission_index: None, timeout: None }).map_err(|e| match e {
            wgpu::PollError::Timeout => Error::DeviceLost("timed out waiting for the GPU".into()),
            other => Error::DeviceLost(one_line(&other.to_string())),
        })?;
        self.check_errors()
    }

    /// Submits every recorded dispatch without waiting for it.
    pub fn flush(&self) -> Result<()> {
        let mut r = lock(&self.inner.recorder);
        self.submit(&mut r)
    }

    /// Submits every recorded dispatch and waits until the GPU has finished them.
    pub fn sync(&self) -> Result<()> {
        self.flush()?;
        self.wait()
    }

    // ----- profiling -----

    /// Turns per-dispatch profiling on (clearing earlier records) or off.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        let mut r = lock(&self.inner.recorder);
        self.submit(&mut r)?;
        if !on {
            r.profiler = None;
            return Ok(());
        }
        let timestamps = self.info().timestamps.then(|| {
            let bytes = QUERY_CAPACITY as u64 * 8;
            TimestampState {
                queries: self.device().create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("vlsa timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: QUERY_CAPACITY,
                }),
                resolve: self.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("vlsa timestamp resolve"),
                    size: bytes,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                readback: self.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("vlsa timestamp readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                used: 0,
                pending: Vec::new(),
                origin_ns: None,
            }
        });
        r.profiler = Some(ProfilerState { timestamps, wall_origin: Instant::now(), records: Vec::new() });
        Ok(())
    }

    /// Finishes pending work and returns the records gathered since profiling was turned on
    /// (or since the last call); `None` when profiling is off.
    pub fn take_profile(&self) -> Result<Option<Profile>> {
        self.sync()?;
        let mut r = lock(&self.inner.recorder);
        Ok(r.profiler.as_mut().map(|p| Profile {
            timing: if p.timestamps.is_some() { Timing::GpuTimestamps } else { Timing::WallClock },
            records: std::mem::take(&mut p.records),
        }))
    }

    /// Opens a named profiling scope (e.g. `iter=2`) that labels every dispatch recorded until
    /// the returned guard is dropped.
    pub fn scope(&self, name: impl Into<String>) -> ProfileScope {
        lock(&self.inner.recorder).scopes.push(name.into());
        ProfileScope { gpu: self.clone() }
    }
}

/// Guard of a profiling scope; closes it when dropped.
pub struct ProfileScope {
    gpu: Gpu,
}

impl Drop for ProfileScope {
    fn drop(&mut self) {
        lock(&self.gpu.inner.recorder).scopes.pop();
    }
}

/// Splits `workgroups` over x and y so neither exceeds 65535 (the portable limit). Shaders
/// index workgroups as `wid.x + wid.y * nwg.x` and bounds-check the result.
pub fn grid(workgroups: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if workgroups <= MAX {
        [workgroups, 1, 1]
    } else {
        [MAX, workgroups.div_ceil(MAX), 1]
    }
}
