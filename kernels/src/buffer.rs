//! GPU buffers and the pool that recycles them.
//!
//! Every storage buffer comes from a [`BufferPool`]. Sizes are rounded up to a size class
//! (powers of two and the halfway points between them, so at most 33% is wasted); a dropped
//! [`GpuBuffer`] goes back to its class and the next request of that class reuses it. Repeated
//! identical training steps therefore allocate nothing after the first one. The pool counts
//! bytes allocated on the device and bytes handed out, so tests and the profiler can check that
//! memory stays flat.
//!
//! Reuse is safe without fences: all GPU work runs in queue order, so a buffer returned to the
//! pool and handed out again is only written by commands recorded after those that read it.
//! Host uploads (`queue.write_buffer`) are the exception, and [`crate::Gpu::upload`] flushes
//! pending work before writing into a recycled buffer for that reason.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Source of contents tags ([`Contents`]): a new buffer, also one whose memory the pool recycled
/// from a dropped buffer, and every recorded write take the next one.
static NEXT_CONTENTS: AtomicU64 = AtomicU64::new(1);

fn next_contents() -> u64 {
    NEXT_CONTENTS.fetch_add(1, Ordering::Relaxed)
}

/// Usage every pooled storage buffer has: bound to shaders, copied to and from, cleared.
pub(crate) const STORAGE_USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

/// Smallest buffer the pool hands out, in bytes.
const MIN_CLASS: u64 = 256;

/// Rounds a byte count up to its size class: 256, 384, 512, 768, 1024, 1536, ...
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(MIN_CLASS);
    let pow = bytes.next_power_of_two();
    let mid = pow / 2 + pow / 4;
    if bytes <= mid {
        mid
    } else {
        pow
    }
}

#[derive(Default)]
struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    allocated_bytes: u64,
    in_use_bytes: u64,
    allocations: u64,
}

/// Counters of a [`BufferPool`], in bytes of device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of all buffers the pool has created and not released.
    pub allocated_bytes: u64,
    /// Bytes of the buffers currently handed out.
    pub in_use_bytes: u64,
    /// How many buffers the pool has created since it started.
    pub allocations: u64,
}

/// A size-class pool of storage buffers, shared by every [`GpuBuffer`] it hands out.
#[derive(Clone, Default)]
pub struct BufferPool {
    state: Arc<Mutex<PoolState>>,
}

impl BufferPool {
    /// Takes a free buffer of the class of `bytes`, or returns `None` when the class is empty.
    pub(crate) fn take(&self, bytes: u64) -> Option<(wgpu::Buffer, u64)> {
        let class = size_class(bytes);
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let buffer = s.free.get_mut(&class)?.pop()?;
        s.in_use_bytes += class;
        Some((buffer, class))
    }

    /// Records a freshly created buffer of `class` bytes as allocated and in use.
    pub(crate) fn record_new(&self, class: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.allocated_bytes += class;
        s.in_use_bytes += class;
        s.allocations += 1;
    }

    fn give_back(&self, buffer: wgpu::Buffer, class: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_use_bytes -= class;
        s.free.entry(class).or_default().push(buffer);
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        PoolStats { allocated_bytes: s.allocated_bytes, in_use_bytes: s.in_use_bytes, allocations: s.allocations }
    }

    /// Destroys every free buffer, returning their memory to the device.
    pub fn release_free(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let freed: u64 = s.free.iter().map(|(class, v)| class * v.len() as u64).sum();
        for (_, v) in s.free.drain() {
            for b in v {
                b.destroy();
            }
        }
        s.allocated_bytes -= freed;
    }
}

/// A storage buffer on the GPU holding `len` elements of 4 bytes (f32 or u32).
///
/// Dropping it returns the memory to the pool it came from.
pub struct GpuBuffer {
    buffer: Option<wgpu::Buffer>,
    class: u64,
    len: usize,
    pool: BufferPool,
    /// The tag of what the buffer holds as of the commands recorded so far (see
    /// [`GpuBuffer::contents`]); shared with the operand textures copied from it, which see
    /// through a [`Weak`] whether the buffer still holds what they hold ([`ContentsWatch`]).
    contents: Arc<AtomicU64>,
}

/// What a buffer holds at one point of the command stream, as a tag: a new buffer and every
/// write recorded into one take a tag never used before, and a copy of a whole buffer into a
/// whole buffer of the same length gives the destination the source's tag. Equal tags mean
/// equal contents, so a texture copied from a buffer can stand in for a later copy of it or of
/// a whole-buffer copy of it (the context's operand textures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Contents(u64);

/// Whether a buffer still holds given contents, without keeping the buffer alive: false once
/// the buffer is dropped or a write into it is recorded (a whole-buffer copy included). A
/// texture copied from contents that no buffer holds any more can never be found again (a
/// whole-buffer copy may still hold them: then it is merely reused early), so it is the first
/// to reuse.
#[derive(Clone, Debug)]
pub(crate) struct ContentsWatch {
    contents: Weak<AtomicU64>,
    at: u64,
}

impl ContentsWatch {
    pub(crate) fn current(&self) -> bool {
        self.contents.upgrade().is_some_and(|c| c.load(Ordering::Acquire) == self.at)
    }
}

impl GpuBuffer {
    pub(crate) fn new(buffer: wgpu::Buffer, class: u64, len: usize, pool: BufferPool) -> Self {
        GpuBuffer { buffer: Some(buffer), class, len, pool, contents: Arc::new(AtomicU64::new(next_contents())) }
    }

    /// A watch on this buffer's contents as of the commands recorded so far.
    pub(crate) fn watch(&self) -> ContentsWatch {
        ContentsWatch { contents: Arc::downgrade(&self.contents), at: self.contents.load(Ordering::Acquire) }
    }

    /// The buffer's contents as of the commands recorded so far.
    pub(crate) fn contents(&self) -> Contents {
        Contents(self.contents.load(Ordering::Acquire))
    }

    /// Notes a recorded copy of the whole of `src` over the whole of this buffer (the same
    /// length): from then on it holds what `src` held, and a texture copied from either serves
    /// both (a residual copied into the output a Linear accumulates onto, whose contents the
    /// layer norm before had copied into a texture).
    pub(crate) fn note_copy_of(&self, src: &GpuBuffer) {
        debug_assert_eq!(self.len, src.len);
        self.contents.store(src.contents.load(Ordering::Acquire), Ordering::Release);
    }

    /// Notes a recorded command that writes (or may write) this buffer. Every write vlsa
    /// records goes through [`crate::Gpu`], which calls this; commands recorded on [`raw`]
    /// directly must not write a buffer that a vlsa kernel reads afterwards.
    ///
    /// [`raw`]: GpuBuffer::raw
    pub(crate) fn note_write(&self) {
        self.contents.store(next_contents(), Ordering::Release);
    }

    /// Number of 4-byte elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a buffer of zero elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size of the data in bytes (`4 * len`).
    pub fn byte_len(&self) -> u64 {
        self.len as u64 * 4
    }

    /// Size of the underlying allocation (its size class) in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.class
    }

    /// The wgpu buffer. Write it only through [`crate::Gpu`] (its uploads, copies, clears and
    /// launches): vlsa reuses a texture copy of a buffer for as long as it has recorded no
    /// write into it, and cannot see writes recorded on the raw buffer.
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("GpuBuffer used after drop")
    }

    /// The range of the buffer a shader sees: the data, at least 4 bytes.
    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.raw(),
            offset: 0,
            size: std::num::NonZeroU64::new(self.byte_len().max(4)),
        })
    }
}

/// Checks that `buf` holds at least the elements of `shape`; the error names what, the
/// buffer's length and the shape. Every launcher validates its buffers with this.
pub(crate) fn check_len(what: &str, buf: &GpuBuffer, shape: &[usize]) -> crate::Result<()> {
    let needed: usize = shape.iter().product();
    if buf.len() < needed {
        return Err(crate::Error::Shape(format!(
            "{what} has {} elements but shape {shape:?} needs {needed}",
            buf.len()
        )));
    }
    Ok(())
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.pool.give_back(b, self.class);
        }
    }
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuffer({} x 4 bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 384);
        assert_eq!(size_class(385), 512);
        assert_eq!(size_class(513), 768);
        for bytes in [1u64, 300, 1000, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes);
            assert!(c as f64 <= (bytes.max(256) as f64) * 1.5 + 1.0, "{bytes} -> {c}");
        }
    }
}
